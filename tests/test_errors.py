"""Every argument of every public function is checked, under its own name.

``BAD`` holds, per public callable, one bad value per argument and the error
it must raise at the call (a transform when it is built, not at its first
update); the message must name the argument as the user typed it.
``test_every_argument_is_covered`` walks ``ortho_optax.__all__`` signature by
signature, so a new argument needs a row here (or a reason in ``EXEMPT``).
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax as oo

X = jnp.ones((4, 8))
KEY = jax.random.key(0)
PARAMS = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
ATTN = {"a": {"query": {"kernel": jnp.ones((4, 2, 3))},
              "key": {"kernel": jnp.ones((4, 2, 3))}}}


_REPLICATED = {
    k: jax.NamedSharding(jax.make_mesh((jax.device_count(),), ("x",)),
                         jax.P())
    for k in PARAMS
}


@functools.cache
def _hlo():
  return jax.jit(jnp.sin).lower(X).compile().as_text()


def _lr(fn):
  return lambda learning_rate=0.01, **kw: fn(learning_rate, **kw)


def _abstract(call):
  """Runs ``call`` under ``jax.eval_shape``: the checks run when tracing,
  and nothing is computed (eager engines are slow on CPU)."""
  return lambda **kw: jax.eval_shape(lambda: call(**kw))


def _x(fn):
  return _abstract(lambda x=X, **kw: fn(x, **kw))


# Each entry calls the public callable with valid required arguments, which
# the keyword arguments may replace.
CALLS = {
    "muon": _lr(oo.muon),
    "turbo_muon": _lr(oo.turbo_muon),
    "normuon": _lr(oo.normuon),
    "adamuon": _lr(oo.adamuon),
    "root": _lr(oo.root),
    "auon": _lr(oo.auon),
    "hybrid_auon": _lr(oo.hybrid_auon),
    "scion": _lr(oo.scion),
    "trust_region": _lr(oo.trust_region),
    "scale_by_momentum": oo.scale_by_momentum,
    "add_cautious_decayed_weights": oo.add_cautious_decayed_weights,
    "scale_by_orthogonalization": oo.scale_by_orthogonalization,
    "scale_by_lmo": lambda norm="spectral", **kw: oo.scale_by_lmo(norm, **kw),
    "scale_by_shape": oo.scale_by_shape,
    "scale_by_neuron_norm": oo.scale_by_neuron_norm,
    "scale_by_elementwise_norm": oo.scale_by_elementwise_norm,
    "clip_by_quantile": oo.clip_by_quantile,
    "newton_schulz": _x(oo.newton_schulz),
    "gram_newton_schulz": _x(oo.gram_newton_schulz),
    "polar_svd": _x(oo.polar_svd),
    "auon_orthogonalize": _x(oo.auon_orthogonalize),
    "orthogonalize": _x(oo.orthogonalize),
    "orthogonalize_flops": (
        lambda shape=(4, 8), **kw: oo.orthogonalize_flops(shape, **kw)
    ),
    "select_method": lambda shape=(4, 8), **kw: oo.select_method(shape, **kw),
    "inverse_root": _abstract(
        lambda a=None, p=4, **kw: oo.inverse_root(
            jnp.eye(3) if a is None else a, p, **kw
        )
    ),
    "inverse_root_flops": (
        lambda shape=(3, 3), method="newton", **kw: oo.inverse_root_flops(
            shape, method, **kw
        )
    ),
    "prism_orthogonalize": _x(oo.prism_orthogonalize),
    "orthogonality_error": _abstract(
        lambda y=X, x=X: oo.orthogonality_error(y, x)
    ),
    "count_matmul_flops": (
        lambda fn=jnp.sin, **kw: oo.count_matmul_flops(fn, X, **kw)
    ),
    "collective_bytes": lambda hlo_text=...: oo.collective_bytes(
        _hlo() if hlo_text is ... else hlo_text
    ),
    "compiled_matmul_flops": lambda hlo_text=...: oo.compiled_matmul_flops(
        _hlo() if hlo_text is ... else hlo_text
    ),
    "dimension_numbers_tree": (
        lambda params=PARAMS, **kw: oo.dimension_numbers_tree(params, **kw)
    ),
    "label_params": lambda params=PARAMS, **kw: oo.label_params(params, **kw),
    "scion_norms": lambda params=PARAMS, **kw: oo.scion_norms(params, **kw),
    "scion_init": _abstract(
        lambda key=KEY, params=PARAMS, **kw: oo.scion_init(
            key, params, **kw
        )
    ),
    "pome": _abstract(
        lambda pretrained=PARAMS, finetuned=PARAMS, **kw: oo.pome(
            pretrained, finetuned, **kw
        )
    ),
    "qk_clip": _abstract(
        lambda params=ATTN, max_logits=None, **kw: oo.qk_clip(
            params,
            {"a": jnp.ones(2)} if max_logits is None else max_logits,
            **kw,
        )
    ),
    "recommended_learning_rate": (
        lambda name="muon": oo.recommended_learning_rate(name)
    ),
    "collect_representations": (
        lambda fn=lambda m, x: {"k": x}, model=None, inputs=X, **kw:
        oo.collect_representations(fn, model, inputs, **kw)
    ),
    "conv_patches": _abstract(
        lambda x=None, kernel_size=(3, 3), **kw: oo.conv_patches(
            jnp.ones((1, 4, 4, 2)) if x is None else x, kernel_size, **kw
        )
    ),
    "update_bases": (
        lambda bases=None, representations=None, threshold=0.9, **kw:
        oo.update_bases(
            bases,
            {"w": np.ones((4, 3))} if representations is None
            else representations,
            threshold, **kw,
        )
    ),
    "relaxing_bases": (
        lambda bases=None, gradients=None, **kw: oo.relaxing_bases(
            {"w": np.eye(4)[:, :2]} if bases is None else bases,
            {"w": np.ones((4, 8))} if gradients is None else gradients, **kw,
        )
    ),
    "project_gradients": (
        lambda bases=None, **kw: oo.project_gradients(
            {"w": jnp.eye(4)[:, :2]} if bases is None else bases, **kw
        ).init(PARAMS)
    ),
    "with_gradient_projection": (
        lambda tx=None, bases=None, **kw: oo.with_gradient_projection(
            optax.sgd(0.1) if tx is None else tx,
            {"w": jnp.eye(4)[:, :2]} if bases is None else bases, **kw,
        ).init(PARAMS)
    ),
    "dion": _lr(oo.dion),
    "dion2": _lr(oo.dion2),
    "trion": _lr(oo.trion),
    "scale_by_dion": oo.scale_by_dion,
    "scale_by_dion2": oo.scale_by_dion2,
    "scale_by_trion": oo.scale_by_trion,
    "shampoo": _lr(oo.shampoo),
    "soap": _lr(oo.soap),
    "scale_by_shampoo": oo.scale_by_shampoo,
    "scale_by_soap": oo.scale_by_soap,
    "LMONorm": lambda name="spectral", **kw: oo.LMONorm(name, **kw),
    "QuantFormat": oo.QuantFormat,
    "quantize": _abstract(lambda x=X, **kw: oo.quantize(x, **kw)),
    "dequantize": _abstract(
        lambda q=..., **kw: oo.dequantize(
            oo.quantize(X) if q is ... else q, **kw
        )
    ),
    "state_shardings": (
        lambda tx=..., params=PARAMS, param_shardings=...: oo.state_shardings(
            oo.muon(0.01) if tx is ... else tx, params,
            _REPLICATED if param_shardings is ... else param_shardings,
        )
    ),
    "CoefficientTable": (
        lambda name="t", rows=((3.0, -4.0, 2.0),), **kw: oo.CoefficientTable(
            name, rows, **kw
        )
    ),
    # Named tuples are checked where they are used.
    "ShardingOptions": lambda **kw: oo.scale_by_orthogonalization(
        sharding=oo.ShardingOptions(**kw)
    ),
    "DimensionNumbers": lambda **kw: oo.label_params(
        {"w": X}, dimension_numbers=oo.DimensionNumbers(**kw)
    ),
    "SplitDimensionNumbers": lambda **kw: oo.label_params(
        {"w": X},
        dimension_numbers=oo.SplitDimensionNumbers(
            **{"split_sizes": (4, 4), **kw}
        ),
    ),
}

V, T = ValueError, TypeError

# Arguments every named optimizer takes.
_OPTIMIZER_COMMON = [
    ("learning_rate", -0.1, V),
    ("learning_rate", "fast", T),
    ("adam_learning_rate", float("inf"), V),
    ("adam_b1", 1.5, V),
    ("adam_b2", -1, V),
    ("adam_eps", -1, V),
    ("adam_weight_decay", -1.0, V),
    ("labels", {"w": "sideways", "b": "adam"}, V),
    ("rules", [("w", "sideways")], V),
    ("dimension_numbers", "sideways", V),
    ("mu_dtype", jnp.int32, T),
    ("sharding", "everywhere", V),
    ("skip_nonfinite", "yes", T),
    ("weight_decay_mode", "caution", V),
    ("weight_decay_mode", None, V),
    ("update_rms", -0.2, V),
    ("update_rms", 0.0, V),
]
_WEIGHT_DECAY = [("weight_decay", -1.0, V), ("weight_decay_mask", "yes", T)]
_NU = [("nu_dtype", jnp.int8, T), ("nu_dtype", "q16", T)]
_ENGINE = [
    ("method", "qr", V),
    ("coeffs", "nope", V),
    ("steps", 0, V),
    ("normalization", "l7", V),
    ("compute_dtype", jnp.int32, T),
]
_MUON_LIKE = [("beta", 1.5, V), ("nesterov", "yes", T)]
_MUON_OWN = [
    ("momentum_form", "x", V),
    ("bias_correction", "yes", T),
    ("eps", -1.0, V),
    ("shape_rule", "x", V),
    ("shape_rms", -1, V),
]
_AUON_OWN = [
    ("gamma", -1.0, V),
    ("hybrid_steps", -1, V),
    ("eps", -1.0, V),
    ("shape_rule", "x", V),
    ("shape_rms", -1, V),
]
_ROUTING = [("dimension_numbers", "sideways", V), ("rules", "w", T)]
# Shampoo and SOAP.
_SECOND_ORDER = [
    ("b1", 1.5, V),
    ("b2", -0.1, V),
    ("eps", -1.0, V),
    ("precondition_every", 0, V),
    ("precondition_every", jnp.asarray(10), T),
    ("precondition_warmup", -1, V),
    ("precondition_warmup", 2.5, T),
    ("precondition_warmup", jnp.asarray(3), T),
    ("max_precond_dim", -1, V),
    ("max_precond_dim", 1.5, T),
    ("precond_dtype", jnp.int8, T),
    ("precond_dtype", "u4", V),
    ("bjorck_steps", -1, V),
]
_SHAMPOO_OWN = [
    ("graft", "sgd", V),
    ("graft_eps", -1.0, V),
    ("nesterov", "yes", T),
    ("start_preconditioning_step", 0, V),
    ("root_method", "svd", V),
]
_SOAP_OWN = [("shampoo_beta", 1.0, V), ("normalize_grads", "yes", T)]
_TRANSFORM_STATE = [
    ("mu_dtype", jnp.int32, T),
    ("nu_dtype", jnp.int8, T),
    ("sharding", "everywhere", V),
]

BAD = {
    "shampoo": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _SECOND_ORDER
    + _SHAMPOO_OWN,
    "soap": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _SECOND_ORDER
    + _SOAP_OWN,
    "scale_by_shampoo": _ROUTING + _SECOND_ORDER + _SHAMPOO_OWN
    + _TRANSFORM_STATE,
    "scale_by_soap": _ROUTING + _SECOND_ORDER + _SOAP_OWN + _TRANSFORM_STATE
    + [("correct_bias", "yes", T)],
    "muon": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + _MUON_LIKE
    + _MUON_OWN,
    "turbo_muon": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + _MUON_LIKE
    + _MUON_OWN,
    "normuon": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + _MUON_LIKE + [
        ("beta2", 1.0, V),
        ("eps", -1.0, V),
        ("rescale", "l2", V),
        ("rms", -0.2, V),
        ("shape_rule", "x", V),
        ("ns_eps", -1.0, V),
    ],
    "adamuon": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + _MUON_LIKE + [
        ("eps", -1.0, V),
        ("sign", "yes", T),
        ("rms", -0.2, V),
        ("ns_eps", -1.0, V),
    ],
    "root": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + _MUON_LIKE + [
        ("q", 1.5, V),
        ("eps", -1.0, V),
        ("shape_rule", "x", V),
        ("shape_rms", -1, V),
    ],
    "auon": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _MUON_LIKE + _AUON_OWN,
    "hybrid_auon": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _MUON_LIKE + _AUON_OWN,
    "scion": _NU + _OPTIMIZER_COMMON + _ENGINE + [
        ("preset", "vit", V),
        ("norms", "l1", V),
        ("norms", {"w": "spectral", "b": "l2"}, V),
        ("radii", -1.0, V),
        ("radii", {"w": 1.0, "b": -3.0}, V),
        ("alpha", 0.0, V),
        ("constrained", "maybe", T),
        ("eps", -1.0, V),
        ("ns_eps", -1.0, V),
    ],
    "trust_region": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + [
        ("norm", "nuclear", V),
        ("alpha", 1.5, V),
        ("eps", -1.0, V),
        ("ns_eps", -1.0, V),
    ],
    "dion": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + [
        ("rank", 0, V),
        ("beta", 1.5, V),
        ("eps", -1.0, V),
        ("seed", "x", T),
        ("shape_rule", "x", V),
        ("shape_rms", -1, V),
    ],
    "dion2": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + [
        ("rank", 1.5, V),
        ("beta", 1.5, V),
        ("ns_eps", -1.0, V),
        ("shape_rule", "x", V),
        ("shape_rms", -1, V),
    ],
    "trion": _NU + _OPTIMIZER_COMMON + _WEIGHT_DECAY + _ENGINE + [
        ("rank", 0, V),
        ("beta", 1.5, V),
        ("dct", "x", V),
        ("ns_eps", -1.0, V),
        ("shape_rule", "x", V),
        ("shape_rms", -1, V),
    ],
    "scale_by_dion": _ROUTING + [
        ("rank", 0, V),
        ("beta", 1.5, V),
        ("eps", -1.0, V),
        ("seed", "x", T),
        ("mu_dtype", jnp.int32, T),
        ("mu_dtype", "u8", V),
        ("mu_dtype", "q16", T),
        ("sharding", "everywhere", V),
    ],
    "scale_by_dion2": _ROUTING + [
        ("rank", 0, V),
        ("beta", 1.5, V),
        ("method", "qr", V),
        ("mu_dtype", jnp.int32, T),
        ("mu_dtype", "u8", V),
        ("mu_dtype", "q16", T),
        ("sharding", "everywhere", V),
    ],
    "scale_by_trion": _ROUTING + [
        ("rank", 0, V),
        ("beta", 1.5, V),
        ("dct", "x", V),
        ("method", "qr", V),
        ("mu_dtype", jnp.int32, T),
        ("mu_dtype", "u8", V),
        ("mu_dtype", "q16", T),
        ("sharding", "everywhere", V),
    ],
    "scale_by_momentum": [
        ("beta", 1.0, V),
        ("beta", "high", T),
        ("nesterov", "yes", T),
        ("form", "x", V),
        ("bias_correction", 1, T),
        ("mu_dtype", jnp.int32, T),
        ("mu_dtype", jnp.bool_, T),
        ("mu_dtype", "floaty", T),
    ],
    "scale_by_orthogonalization": _ROUTING + [
        ("method", "qr", V),
        ("sharding", "everywhere", V),
    ],
    "scale_by_lmo": _ROUTING + [
        ("norm", "nuclear", V),
        ("radius", -1.0, V),
        ("eps", -1.0, V),
        ("method", "qr", V),
        ("sharding", "everywhere", V),
        ("ns_eps", -1.0, V),
    ],
    "scale_by_shape": _ROUTING + [("rule", "x", V), ("rms", -1.0, V)],
    "add_cautious_decayed_weights": [
        ("weight_decay", -0.1, V),
        ("weight_decay", "lots", T),
        ("mask", "yes", T),
    ],
    "scale_by_neuron_norm": _ROUTING + [
        ("beta2", 1.0, V),
        ("eps", -1.0, V),
        ("rescale", "l2", V),
        ("rms", 0.0, V),
    ],
    "scale_by_elementwise_norm": _ROUTING + _NU + [
        ("beta", -0.1, V),
        ("eps", float("nan"), V),
        ("rms", -1.0, V),
    ],
    "clip_by_quantile": _ROUTING + [("q", 1.5, V), ("q", "high", T)],
    "newton_schulz": [
        ("x", jnp.ones(3), V),
        ("x", "matrix", T),
        ("coeffs", "nope", V),
        ("steps", 0, V),
        ("normalization", "l7", V),
        ("eps", -1.0, V),
        ("compute_dtype", jnp.int32, T),
        ("symmetric", "yes", T),
    ],
    "gram_newton_schulz": [
        ("x", jnp.ones((4, 8), jnp.int32), T),
        ("coeffs", "nope", V),
        ("steps", 1.5, T),
        ("restarts", (7,), V),
        ("normalization", "l7", V),
        ("eps", -1.0, V),
        ("compute_dtype", "floaty", T),
        ("symmetric", 1, T),
    ],
    "polar_svd": [("x", jnp.ones(3), V)],
    "auon_orthogonalize": [
        ("x", jnp.ones(3), V),
        ("gamma", -1.0, V),
        ("hybrid_steps", -1, V),
        ("eps", -1.0, V),
        ("symmetric", "on", T),
    ],
    "orthogonalize": [("x", jnp.ones(3), V), ("method", "qr", V)],
    "orthogonalize_flops": [
        ("shape", 5, T),
        ("shape", (4,), V),
        ("method", "qr", V),
        ("dtype", "notadtype", T),
        ("backend", ("gpu",), T),
    ],
    "inverse_root": [
        ("a", jnp.ones(3), V),
        ("a", jnp.ones((3, 4)), V),
        ("p", 0, V),
        ("method", "svd", V),
        ("eps", -1.0, V),
        ("steps", 0, V),
        ("tol", -1.0, V),
        ("bound", "trace", V),
        ("power_iterations", -1, V),
        ("sketch_size", 0, V),
        ("seed", "s", T),
        ("symmetric", "on", T),
    ],
    "inverse_root_flops": [
        ("shape", (3, 4), V),
        ("method", "svd", V),
        ("p", 0, V),
        ("eps", -1.0, V),
        ("steps", 0, V),
        ("bound", "trace", V),
        ("power_iterations", -1, V),
        ("sketch_size", 0, V),
        ("symmetric", "on", T),
        ("dtype", "notadtype", T),
        ("unused_options", {"steps_": 3}, T),
    ],
    "prism_orthogonalize": [
        ("x", jnp.ones(3), V),
        ("steps", -1, V),
        ("normalization", "x", V),
        ("eps", -1.0, V),
        ("compute_dtype", "x", T),
        ("symmetric", "on", T),
        ("sketch_size", 0, V),
        ("seed", "s", T),
    ],
    "select_method": [
        ("shape", (4,), V),
        ("dtype", "notadtype", T),
        ("backend", 3, T),
    ],
    "orthogonality_error": [("y", jnp.ones(3), V), ("x", jnp.ones((8, 4)), V)],
    "count_matmul_flops": [("fn", 3, T)],
    "collective_bytes": [("hlo_text", 3, T)],
    "compiled_matmul_flops": [("hlo_text", None, T)],
    "dimension_numbers_tree": [
        ("rules", [("w", "sideways")], V),
        ("dimension_numbers", {"w": "sideways", "b": None}, V),
        ("use_names", "yes", T),
    ],
    "label_params": [
        ("rules", [("(", "adam")], V),
        ("dimension_numbers", "sideways", V),
    ],
    "scion_norms": [
        ("preset", "vit", V),
        ("input_pattern", "(", V),
        ("output_pattern", 3, T),
    ],
    "scion_init": [
        ("key", 0, T),
        ("preset", "vit", V),
        ("norms", "l1", V),
        ("radii", -1.0, V),
        ("dimension_numbers", "sideways", V),
        ("rules", [("w", "sideways")], V),
    ],
    "pome": [
        ("pretrained", {"w": jnp.ones((4, 8))}, V),
        ("finetuned", {"w": jnp.ones((4, 8))}, V),
        ("rank_ratio", 0.0, V),
        ("scale", "max", V),
        ("alpha", -1.0, V),
        ("mask", {"w": True}, V),
    ],
    "qk_clip": [
        ("max_logits", {"b": jnp.ones(2)}, V),
        ("tau", 0.0, V),
        ("alpha", 2.0, V),
        ("alpha", "half", T),
        ("query_key", 3, T),
        ("key_key", "query", V),
    ],
    "collect_representations": [
        ("fn", 3, T),
        ("batch_size", 0, V),
        ("batch_ndim", -1, V),
    ],
    "conv_patches": [
        ("x", jnp.ones((4, 4)), V),
        ("kernel_size", (0, 3), V),
        ("kernel_size", 3, T),
        ("strides", 0, V),
        ("padding", "same", V),
    ],
    "update_bases": [
        ("bases", {"v": np.ones((4, 1))}, V),
        ("representations", {"w": np.full((4, 3), np.nan)}, V),
        ("threshold", 0.0, V),
        ("dtype", "notadtype", T),
    ],
    "relaxing_bases": [
        ("bases", {"v": np.eye(4)[:, :2]}, V),
        ("gradients", {"w": np.ones((5, 8))}, V),
        ("threshold", 1.5, V),
        ("relax_threshold", 2.0, V),
        ("relaxed", {"v": np.ones((4, 1))}, V),
        ("dtype", "notadtype", T),
    ],
    "project_gradients": [
        ("bases", {"w": jnp.ones((4, 2))}, V),
        ("relax", {"w": jnp.eye(4)[:, 2:3]}, V),
        ("dimension_numbers", "sideways", V),
        ("rules", [("w", "sideways")], V),
    ],
    "with_gradient_projection": [
        ("tx", lambda g: g, T),
        ("bases", {"w": jnp.ones((4, 2))}, V),
        ("relax", {"w": jnp.eye(4)[:, 2:3]}, V),
        ("project_before", "yes", T),
        ("dimension_numbers", "sideways", V),
        ("rules", [("w", "sideways")], V),
    ],
    "recommended_learning_rate": [
        ("name", "adam", V),
        ("name", ["muon"], T),
    ],
    "state_shardings": [
        ("tx", optax.adam, T),
        ("params", {"w": "kernel", "b": jnp.zeros(8)}, T),
        ("param_shardings", {"w": jax.P(), "b": jax.P()}, T),
    ],
    "QuantFormat": [
        ("code", "q3", V),
        ("block_size", 0, V),
        ("stochastic", "yes", T),
    ],
    "quantize": [
        ("x", jnp.ones(3, jnp.int32), T),
        ("format", "int8", V),
        ("block_size", -1, V),
        ("key", 3, T),
    ],
    "dequantize": [
        ("q", X, T),
        ("dtype", jnp.int8, T),
        ("out_sharding", "x", T),
    ],
    "LMONorm": [
        ("name", "rms", V),
        ("normalized", "yes", T),
        ("max", "yes", T),
        ("unit", 1, T),
    ],
    "CoefficientTable": [
        ("name", 3, T),
        ("rows", ((1.0, 2.0),), V),
        ("input_scale", 0.5, V),
        ("normalization", "l7", V),
        ("source", 3, T),
        ("by_shape", (((8, 4), (1.0, 2.0, 3.0)),), V),
    ],
    "ShardingOptions": [
        ("strategy", "everywhere", V),
        ("mesh", "mesh", T),
        ("axes", 3, T),
        ("max_matrix_bytes", -1, V),
    ],
    "DimensionNumbers": [
        ("reduction_axis", "a", T),
        ("output_axis", 1.5, T),
    ],
    "SplitDimensionNumbers": [
        ("reduction_axis", "a", T),
        ("output_axis", 1.5, T),
        ("split_axis", "x", T),
        ("split_axis", 2, V),  # out of range for the (4, 8) leaf
        ("split_sizes", (3, 5), V),  # unequal parts
        ("split_sizes", (4, 5), V),  # do not sum to the axis' length
        ("split_sizes", (), V),
        ("split_sizes", 4, T),
    ],
}

# Arguments that take any value of their kind, with the reason.
EXEMPT = {
    ("count_matmul_flops", "args"): "the traced function's own arguments",
    ("count_matmul_flops", "kwargs"): "the traced function's own arguments",
    ("dimension_numbers_tree", "params"): "any tree",
    ("label_params", "params"): "any tree",
    ("scion_norms", "params"): "any tree",
    ("scion_init", "params"): "any tree",
    ("qk_clip", "params"): "any tree; max_logits is checked against it",
    ("collect_representations", "model"): "passed to the user's `fn`",
    ("collect_representations", "inputs"): "passed to the user's `fn`",
    ("scale_by_orthogonalization", "engine_options"): "the engine's (below)",
    ("scale_by_lmo", "engine_options"): "the engine's (below)",
    ("scale_by_dion2", "engine_options"): "the engine's (below)",
    ("scale_by_trion", "engine_options"): "the engine's (below)",
    ("orthogonalize", "options"): "the engine's (below)",
    ("orthogonalize_flops", "options"): "the engine's (below)",
    ("select_method", "options"): "the engine's (below)",
    ("QuantizedArray", "codes"): "a container built by quantize",
    ("QuantizedArray", "scales"): "a container built by quantize",
    ("QuantizedArray", "code"): "a container built by quantize",
    ("QuantizedArray", "block"): "a container built by quantize",
    ("QuantizedArray", "shape"): "a container built by quantize",
    ("QuantizedArray", "dtype"): "a container built by quantize",
    ("ShardingOptions", "param_shardings"): (
        "a tree or callable matched against the updates at update time"
    ),
}

# The exception's message names the argument this way (default `name`).
NAMED = {
    ("DimensionNumbers", "reduction_axis"): "reduction_axis='a'",
    ("DimensionNumbers", "output_axis"): "output_axis=1.5",
    ("SplitDimensionNumbers", "reduction_axis"): "reduction_axis='a'",
    ("SplitDimensionNumbers", "output_axis"): "output_axis=1.5",
    ("pome", "pretrained"): "`pretrained`",
}


def _value_id(value) -> str:
  """A test id that is the same in every process: a function's repr holds
  its address, which differs between pytest-xdist workers (and then the
  workers refuse to run, having collected different tests)."""
  if callable(value) and hasattr(value, "__name__"):
    return value.__name__
  return repr(value)


def _cases():
  for fn, rows in BAD.items():
    for arg, value, error in rows:
      yield pytest.param(
          fn, arg, value, error, id=f"{fn}-{arg}-{_value_id(value)}"
      )


@pytest.mark.parametrize("fn, arg, value, error", _cases())
def test_bad_argument_raises_naming_it(fn, arg, value, error):
  with pytest.raises(error) as info:
    CALLS[fn](**{arg: value})
  assert NAMED.get((fn, arg), f"`{arg}`") in str(info.value)


def _public_callables():
  for name in oo.__all__:
    obj = getattr(oo, name)
    if callable(obj) and not name.startswith("Scale"):
      yield name, obj


def test_every_argument_is_covered():
  """Signature by signature: every argument has a bad value in ``BAD``."""
  missing = []
  for name, obj in _public_callables():
    covered = {arg for arg, _, _ in BAD.get(name, ())}
    for arg in inspect.signature(obj).parameters:
      if arg not in covered and (name, arg) not in EXEMPT:
        missing.append(f"{name}({arg}=...)")
  assert not missing, f"add bad values to BAD for: {missing}"


def test_good_values_pass():
  """Every ``CALLS`` entry works with its defaults: the sweep's errors come
  from the bad argument alone."""
  for call in CALLS.values():
    call()


@pytest.mark.parametrize("name", ["muon", "scion", "normuon", "adamuon"])
def test_concrete_and_traced_hyperparameters_pass(name):
  """``inject_hyperparams`` makes numbers arrays (tracers under ``jit``):
  the checks look at concrete arrays and let tracers through."""
  numeric = dict(
      muon=dict(beta=0.9, shape_rms=0.2, weight_decay=0.1, eps=1e-7),
      scion=dict(alpha=0.2, eps=1e-8, ns_eps=1e-7),
      normuon=dict(beta2=0.9, eps=1e-8, rms=0.2, ns_eps=1e-7),
      adamuon=dict(eps=1e-8, rms=0.2, weight_decay=0.1, ns_eps=1e-7),
  )[name]
  numeric.update(learning_rate=0.01, adam_b1=0.9, adam_b2=0.99, adam_eps=1e-8)
  factory = CALLS[name]
  as_arrays = {k: jnp.asarray(v) for k, v in numeric.items()}
  factory(**as_arrays).init(PARAMS)

  def traced(hparams):
    tx = factory(**hparams)
    return tx.update(PARAMS, tx.init(PARAMS), PARAMS)[0]

  out = jax.eval_shape(traced, as_arrays)
  assert jax.tree.map(lambda x: x.shape, out) == jax.tree.map(
      jnp.shape, PARAMS
  )


def test_inject_hyperparams_checks_the_concrete_values():
  with pytest.raises(ValueError, match="`adam_b1`"):
    optax.inject_hyperparams(oo.muon)(learning_rate=0.01, adam_b1=1.5).init(
        PARAMS
    )


@pytest.mark.parametrize("factory", [oo.scion, oo.trust_region])
def test_ns_eps_reaches_the_engine(factory):
  """``ns_eps`` is the engine's epsilon, not confused with ``eps``."""
  x = {"w": jnp.zeros((4, 8))}
  grads = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((4, 8)),
                            jnp.float32)}
  kwargs = dict(method="newton_schulz", coeffs="muon",
                normalization="frobenius", labels={"w": "orthogonalize"})
  small = factory(0.1, ns_eps=1e-7, **kwargs)
  large = factory(0.1, ns_eps=1e4, **kwargs)

  @jax.jit
  def updates():
    return (small.update(grads, small.init(x), x)[0]["w"],
            large.update(grads, large.init(x), x)[0]["w"])

  u_small, u_large = updates()
  # The engine's eps is relative to max|g|: with ns_eps = 1e4 the
  # normalized input is O(1e-4), which five steps (a gain of at most
  # 3.4445^5 < 500) cannot bring back to O(1).
  assert np.linalg.norm(u_large) < 0.1 * np.linalg.norm(u_small)


def test_mu_dtype_must_hold_complex_leaves():
  tx = oo.scale_by_momentum(mu_dtype=jnp.float32)
  with pytest.raises(TypeError, match=r"`mu_dtype`.*\['w'\]"):
    tx.init({"w": jnp.ones((2, 2), jnp.complex64)})


@pytest.mark.parametrize("name", ["scale_by_momentum", "scale_by_dion2",
                                  "scale_by_elementwise_norm"])
def test_complex_state_dtype_refused_for_real_leaves(name):
  """A complex ``mu_dtype`` / ``nu_dtype`` is for complex parameters: on a
  real leaf it is refused at init, naming the argument and the leaf."""
  arg = "nu_dtype" if name == "scale_by_elementwise_norm" else "mu_dtype"
  tx = getattr(oo, name)(**{arg: jnp.complex64})
  with pytest.raises(TypeError, match=rf"`{arg}`=complex64.*\['w'\].*real"):
    tx.init({"w": jnp.ones((4, 6), jnp.float32)})
  state = tx.init({"w": jnp.ones((4, 6), jnp.complex64)})
  buffer = state.nu if arg == "nu_dtype" else state.mu
  assert buffer["w"].dtype == jnp.complex64


@pytest.mark.parametrize(
    "factory, name, base",
    [(oo.turbo_muon, "turbo_muon", "muon"),
     (oo.hybrid_auon, "hybrid_auon", "auon")],
)
def test_variant_names_itself_for_an_unknown_argument(factory, name, base):
  # The variants forward to muon/auon; a misspelt argument is reported
  # against the function the user called, with its parameters listed.
  with pytest.raises(TypeError, match=rf"^{name}\(\): .*'ns_steps'.*"
                     r"its parameters are learning_rate, ") as info:
    factory(0.02, ns_steps=3)
  assert not str(info.value).startswith(f"{base}()")
  with pytest.raises(TypeError, match=rf"^{name}\(\): "):
    factory(0.02, 0.9)  # every argument but the rate is keyword-only
