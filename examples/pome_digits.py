r"""POME on digits: accuracy of a fine-tuned model before and after the edit.

1. Pretrain the digits MLP (``config.pretrain``) on the original task.
2. Fine-tune it with AdamW on a shifted task (``config.finetune``, by default
   images rolled by two pixels), starting from the pretrained weights.
3. Edit the fine-tuned weights with ``ortho_optax.pome`` (no data, no
   training) for each rank ratio, and evaluate every model on the shifted and
   on the original test set.

Writes ``pome.md`` and ``pome.json`` to the workdir. Run from the repository
root::

  python examples/pome_digits.py --workdir=/tmp/pome
"""

import copy
import json
import os
import pathlib
import sys

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import ortho_optax  # noqa: E402
from examples import cli  # noqa: E402
from examples import models  # noqa: E402
from examples import optimizers  # noqa: E402
from examples import train  # noqa: E402

_DEFAULT_CONFIG = str(
    pathlib.Path(__file__).resolve().parents[1] / "configs" / "pome_digits.py"
)

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a script, so that importing has no effects."""
  flags.DEFINE_string("workdir", None, "Directory for the runs and report.")
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG, "Path to the POME configuration.",
      lock_config=True,
  )


def _load(config, workdir):
  model = models.create_model(
      config.model, num_outputs=10, rngs=nnx.Rngs(config.seed)
  )
  nnx.update(model, train.load_model_state(model, workdir))
  return model


def _head_mask(params):
  """``False`` for embeddings and heads (kept fine-tuned), else ``True``."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree_util.tree_map_with_path(
      lambda path, _: not optimizers.is_embedding_or_head(path), params
  )


def run(config, workdir) -> dict:
  """Pretrains, fine-tunes, edits and evaluates; returns the report rows."""
  workdir = pathlib.Path(workdir)
  pre_dir, ft_dir = workdir / "pretrain", workdir / "finetune"
  train.train_and_evaluate(config.pretrain, pre_dir)
  ft_config = copy.deepcopy(config.finetune)
  ft_config.init_from = str(pre_dir.resolve())
  train.train_and_evaluate(ft_config, ft_dir)

  shifted, original = train.Task(ft_config), train.Task(config.pretrain)
  pre_model = _load(config.pretrain, pre_dir)
  ft_model = _load(ft_config, ft_dir)
  pre_params = nnx.state(pre_model, nnx.Param)
  ft_params = nnx.state(ft_model, nnx.Param)

  def row(name, model):
    s, o = shifted.evaluate(model), original.evaluate(model)
    return {
        "model": name, "shifted_accuracy": s["accuracy"],
        "shifted_loss": s["loss"], "original_accuracy": o["accuracy"],
    }

  rows = [row("pretrained", pre_model), row("fine-tuned", ft_model)]
  mask = None if config.pome.edit_head else _head_mask
  for alpha in config.pome.alphas:
    for ratio in config.pome.rank_ratios:
      edited = ortho_optax.pome(
          pre_params, ft_params, rank_ratio=ratio, scale=config.pome.scale,
          alpha=alpha, mask=mask,
      )
      model = _load(ft_config, ft_dir)
      nnx.update(model, edited)
      rows.append(row(f"POME r={ratio:g} alpha={alpha:g}", model))

  shift = ft_config.data.shift
  lines = [
      f"POME on digits: MLP pretrained {config.pretrain.num_train_steps}"
      f" steps, fine-tuned {ft_config.num_train_steps} steps with"
      f" {ft_config.optimizer.name} on the '{shift}'-shifted task; edit with"
      f" scale='{config.pome.scale}',"
      f" head {'edited' if config.pome.edit_head else 'kept fine-tuned'}.",
      "",
      f"| model | accuracy ({shift}) | loss ({shift}) | accuracy (original) |",
      "|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['shifted_accuracy']:.4f} |"
        f" {r['shifted_loss']:.4f} | {r['original_accuracy']:.4f} |"
    )
  report = "\n".join(lines) + "\n"
  (workdir / "pome.md").write_text(report)
  (workdir / "pome.json").write_text(json.dumps(rows, indent=2))
  print(report)
  return {"rows": rows, "report": report}


def main(argv):
  del argv  # cli.run has checked that there are no positional arguments.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  with cli.flag_definitions():  # The default config applies overrides here.
    _define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
