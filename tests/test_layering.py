"""The package's layers import only downwards (see ortho_optax/README.md).

The checker reads every module's imports with ``ast`` (nothing is imported),
so a violation is caught even in a function-level or ``TYPE_CHECKING``
import. It is tested on synthetic modules so that it can be seen to fail.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import ortho_optax

PACKAGE = "ortho_optax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top: a layer may import itself and the layers before it.
ORDER = (
    "checks",
    "engines",
    "state",
    "routing",
    "parallel",
    "transforms",
    "optimizers",
)
# Tools edit checkpoints or parameters; they are not gradient transformations.
TOOLS_MAY_IMPORT = {"checks", "engines", "routing", "tools"}
# The package's __init__ is the public namespace; nothing inside imports it.
API = "__init__"
# Engines (and the state formats) know nothing of optax, flax or sharding:
# arrays in, arrays out.
ENGINE_THIRD_PARTY = {"jax", "jaxlib", "numpy"}


def layer_of(module: str) -> str | None:
  """The layer of a dotted module name inside the package, or None."""
  parts = module.split(".")
  if parts == [PACKAGE]:
    return API
  layer = parts[1]
  return layer if layer in ORDER or layer == "tools" else None


def may_import(importer: str, imported: str) -> bool:
  if importer == API:
    return True
  if imported == API:
    return False
  if importer == "tools":
    return imported in TOOLS_MAY_IMPORT
  if imported == "tools":
    return False
  return ORDER.index(imported) <= ORDER.index(importer)


def _imported_names(module: str, is_package: bool, tree: ast.AST, known):
  """Yields (lineno, dotted name) for each import, resolved to a module."""
  package = module if is_package else module.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base_parts = package.split(".")
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
      else:
        base = node.module
      for alias in node.names:
        # `from pkg import mod` imports a module; `from pkg import name` a name.
        candidate = f"{base}.{alias.name}"
        yield node.lineno, candidate if candidate in known else base


def _owner(name: str, known) -> str:
  """The longest known package module that ``name`` lies in."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    prefix = ".".join(parts[:i])
    if prefix in known:
      return prefix
  return PACKAGE


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
  """Layering violations of ``{dotted name: (source, is_package)}``."""
  known = set(modules)
  found = []
  for module, (source, is_package) in sorted(modules.items()):
    importer = layer_of(module)
    if importer is None:
      found.append(f"{module}: not in a layer folder ({', '.join(ORDER)}, tools)")
      continue
    tree = ast.parse(source)
    for lineno, name in _imported_names(module, is_package, tree, known):
      top = name.split(".")[0]
      if top == PACKAGE:
        target = _owner(name, known)
        imported = layer_of(target)
        if imported is None:
          continue  # reported once, as the module itself
        if not may_import(importer, imported):
          found.append(
              f"{module}:{lineno}: {importer} imports {target} ({imported})"
          )
      elif importer in ("checks", "engines", "state"):
        if top not in ENGINE_THIRD_PARTY and top not in sys.stdlib_module_names:
          found.append(f"{module}:{lineno}: {importer} imports {name}")
  return found


def package_modules() -> dict[str, tuple[str, bool]]:
  modules = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    if is_package:
      parts = parts[:-1]
    modules[".".join(parts)] = (path.read_text(), is_package)
  return modules


def test_package_layers_import_only_downwards():
  modules = package_modules()
  assert "ortho_optax.engines.newton_schulz" in modules  # the walk found them
  assert len(modules) > 30
  assert violations(modules) == []


def _synthetic(extra: dict[str, str]) -> dict[str, tuple[str, bool]]:
  modules = {
      "ortho_optax": ("", True),
      "ortho_optax.checks": ("import jax\n", False),
      "ortho_optax.routing": ("import optax\n", False),
      "ortho_optax.engines": ("", True),
      "ortho_optax.engines.gram": ("import jax\n", False),
      "ortho_optax.state": ("", True),
      "ortho_optax.state.codes": ("import numpy\n", False),
      "ortho_optax.parallel": ("", True),
      "ortho_optax.parallel.sharding": ("", False),
      "ortho_optax.transforms": ("", True),
      "ortho_optax.transforms.momentum": ("", False),
      "ortho_optax.optimizers": ("", True),
      "ortho_optax.optimizers.muon": ("", False),
      "ortho_optax.tools": ("", True),
      "ortho_optax.tools.pome": ("", False),
  }
  modules.update({name: (source, False) for name, source in extra.items()})
  return modules


@pytest.mark.parametrize(
    "module, source",
    [
        # An engine reaching up, in each spelling of an import.
        (
            "ortho_optax.engines.polar",
            "from ortho_optax.transforms import momentum as _momentum\n",
        ),
        ("ortho_optax.engines.polar", "import ortho_optax.parallel.sharding\n"),
        ("ortho_optax.engines.polar", "from ..parallel import sharding\n"),
        ("ortho_optax.engines.polar", "from ortho_optax import routing\n"),
        (
            "ortho_optax.engines.polar",
            "def f():\n  from ortho_optax.optimizers import muon\n",
        ),
        # The public namespace, from inside the package (an import cycle).
        ("ortho_optax.transforms.lmo", "from ortho_optax import muon\n"),
        # Third-party frameworks in the engines or the checks.
        ("ortho_optax.engines.polar", "import optax\n"),
        ("ortho_optax.engines.polar", "from flax import nnx\n"),
        ("ortho_optax.checks", "import optax.tree\n"),
        ("ortho_optax.state.quantized", "import optax\n"),
        # Other upward edges.
        ("ortho_optax.routing", "from ortho_optax.parallel import sharding\n"),
        (
            "ortho_optax.parallel.hlo",
            "from ortho_optax.transforms import momentum\n",
        ),
        (
            "ortho_optax.transforms.lmo",
            "from ortho_optax.optimizers import muon\n",
        ),
        ("ortho_optax.transforms.lmo", "from ortho_optax.tools import pome\n"),
        (
            "ortho_optax.tools.qk_clip",
            "from ortho_optax.transforms import momentum\n",
        ),
        # A module outside every layer folder.
        ("ortho_optax.stray", "import jax\n"),
    ],
)
def test_checker_reports_a_bad_import(module, source):
  found = violations(_synthetic({module: source}))
  assert len(found) == 1, found
  assert found[0].startswith(module)


@pytest.mark.parametrize(
    "module, source",
    [
        (
            "ortho_optax.engines.polar",
            "import jax\nfrom ortho_optax.engines import gram as _gram\n"
            "from ortho_optax import checks\nimport functools\n",
        ),
        ("ortho_optax.engines.polar", "from . import gram\n"),
        (
            "ortho_optax.transforms.momentum",
            "from ortho_optax.state import codes\n",
        ),
        ("ortho_optax.parallel.hlo", "from ortho_optax import routing\n"),
        (
            "ortho_optax.transforms.lmo",
            "import optax\nfrom ortho_optax.parallel import sharding\n",
        ),
        (
            "ortho_optax.optimizers.scion",
            "from ortho_optax.optimizers import muon\n"
            "from ortho_optax.transforms import momentum\n",
        ),
        (
            "ortho_optax.tools.qk_clip",
            "from ortho_optax.engines import gram\nfrom ortho_optax import checks\n",
        ),
        ("ortho_optax", "from ortho_optax.tools.pome import pome as pome\n"),
    ],
)
def test_checker_accepts_a_downward_import(module, source):
  assert violations(_synthetic({module: source})) == []


# The public API, name for name. A change here is a change of the API.
PUBLIC_NAMES = (
    "COEFFICIENT_PRESETS",
    "CoefficientTable",
    "LMONorm",
    "QuantFormat",
    "QuantizedArray",
    "ScaleByElementwiseNormState",
    "ScaleByMomentumState",
    "DimensionNumbers",
    "ScaleByNeuronNormState",
    "ShardingOptions",
    "SplitDimensionNumbers",
    "adamuon",
    "auon",
    "auon_orthogonalize",
    "clip_by_quantile",
    "collective_bytes",
    "compiled_matmul_flops",
    "count_matmul_flops",
    "dequantize",
    "dimension_numbers_tree",
    "gram_newton_schulz",
    "hybrid_auon",
    "label_params",
    "muon",
    "newton_schulz",
    "normuon",
    "orthogonality_error",
    "orthogonalize",
    "orthogonalize_flops",
    "polar_svd",
    "pome",
    "qk_clip",
    "quantize",
    "root",
    "scale_by_elementwise_norm",
    "scale_by_lmo",
    "scale_by_momentum",
    "scale_by_neuron_norm",
    "scale_by_orthogonalization",
    "scale_by_shampoo",
    "scale_by_shape",
    "scale_by_soap",
    "scion",
    "scion_init",
    "scion_norms",
    "select_method",
    "state_shardings",
    "shampoo",
    "soap",
    "trust_region",
    "turbo_muon",
    # Low-rank methods (issue 14).
    "ScaleByDion2State",
    "ScaleByDionState",
    "ScaleByShampooState",
    "ScaleBySoapState",
    "ScaleByTrionState",
    "dion",
    "dion2",
    "scale_by_dion",
    "scale_by_dion2",
    "scale_by_trion",
    "trion",
    # Recommended learning rates, chosen over three tasks (issue 16).
    "RECOMMENDED_LEARNING_RATES",
    "recommended_learning_rate",
    # Continual learning by gradient projection (issue 23).
    "collect_representations",
    "conv_patches",
    "project_gradients",
    "relaxing_bases",
    "update_bases",
    "with_gradient_projection",
    # Cautious weight decay (issue 24).
    "add_cautious_decayed_weights",
    # Matrix roots and PRISM (issue 22).
    "inverse_root",
    "inverse_root_flops",
    "prism_orthogonalize",
)


def test_public_api_is_unchanged():
  assert len(set(ortho_optax.__all__)) == len(ortho_optax.__all__)
  assert sorted(ortho_optax.__all__) == sorted(PUBLIC_NAMES)
  for name in PUBLIC_NAMES:
    obj = getattr(ortho_optax, name)
    # A public name is the object, never a module that shadowed it.
    assert not isinstance(obj, type(ortho_optax)), name
