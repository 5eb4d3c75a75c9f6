"""Flax NNX models for the examples: an MLP, a small CNN and a decoder-only LM.

Attribute names matter: the optimizers route leaves whose path names an
embedding or a head (``embed``, ``lm_head``, ``head``, ...) to AdamW and
orthogonalize the other matrices. So the classifiers end in ``head`` and the
LM has ``embed`` and ``lm_head``.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import ortho_optax


class MLP(nnx.Module):
  """A ReLU MLP on flattened inputs: ``depth`` hidden layers, then ``head``."""

  def __init__(
      self, in_features: int, hidden: int, depth: int, num_classes: int, *,
      rngs: nnx.Rngs,
  ):
    dims = [in_features] + [hidden] * depth
    self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
    )
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return self.head(x)


class CNN(nnx.Module):
  """Two 3x3 convolutions, average pooling, a dense layer and ``head``."""

  def __init__(
      self, in_channels: int, features: int, hidden: int, num_classes: int, *,
      rngs: nnx.Rngs,
  ):
    self.conv1 = nnx.Conv(in_channels, features, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(features, 2 * features, (3, 3), rngs=rngs)
    # 8x8 digits, pooled once to 4x4.
    self.dense = nnx.Linear(4 * 4 * 2 * features, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(self.dense(x))
    return self.head(x)


def rope(x: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding of ``x``: ``(batch, seq, heads, head_dim)``."""
  _, t, _, d = x.shape
  inv_freq = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
  angles = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _kernel_init(zero: bool):
  return (nnx.initializers.zeros_init() if zero
          else nnx.initializers.lecun_normal())


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with rotary positions."""

  def __init__(
      self, d_model: int, num_heads: int, *, zero_init_proj: bool = False,
      rngs: nnx.Rngs,
  ):
    if d_model % num_heads:
      raise ValueError(
          f"`model.d_model`={d_model} must be divisible by"
          f" `model.num_heads`={num_heads}."
      )
    self.num_heads = num_heads
    self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
    self.proj = nnx.Linear(
        d_model, d_model, use_bias=False, rngs=rngs,
        kernel_init=_kernel_init(zero_init_proj),
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.num_heads
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * h, d // h), 3, axis=2)
    q, k = rope(q), rope(k)
    # Plain einsum attention: on CPU it is faster than dot_product_attention.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (d // h) ** -0.5
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None, :, :]
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return self.proj(y.reshape(b, t, d))


def per_head_qkv_rules(d_model: int, num_heads: int) -> list:
  """Routing rules that orthogonalize each head of the fused ``qkv`` kernel.

  :class:`CausalSelfAttention` keeps Q, K and V in one ``(d_model, 3 *
  d_model)`` kernel, heads side by side along the output axis. By default
  the optimizers orthogonalize it as one matrix; with these rules (the
  ``rules=`` of every named optimizer) each of its ``3 * num_heads`` column
  blocks of ``head_dim`` columns is orthogonalized on its own (Dion's
  ``split_sizes``, Paddle's ``per_head``).
  """
  head_dim = d_model // num_heads
  return [(
      r"\['qkv'\]\['kernel'\]",
      ortho_optax.SplitDimensionNumbers(
          0, 1, split_axis=1, split_sizes=(head_dim,) * (3 * num_heads)
      ),
  )]


class Block(nnx.Module):
  """A pre-norm transformer block: attention, then a ReLU^2 MLP."""

  def __init__(
      self, d_model: int, num_heads: int, mlp_ratio: int, *,
      zero_init_residual: bool = False, rngs: nnx.Rngs,
  ):
    self.norm1 = nnx.RMSNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(
        d_model, num_heads, zero_init_proj=zero_init_residual, rngs=rngs
    )
    self.norm2 = nnx.RMSNorm(d_model, rngs=rngs)
    self.fc = nnx.Linear(d_model, mlp_ratio * d_model, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(
        mlp_ratio * d_model, d_model, use_bias=False, rngs=rngs,
        kernel_init=_kernel_init(zero_init_residual),
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    # ReLU^2 (as in modded-nanogpt): as good as GELU here and cheaper on CPU.
    return x + self.out(jnp.square(jax.nn.relu(self.fc(self.norm2(x)))))


class TransformerLM(nnx.Module):
  """A small decoder-only transformer LM (byte-level, untied ``lm_head``).

  With ``zero_init_residual`` the last projection of every residual branch
  (attention's ``proj``, the MLP's ``out``) starts at zero, as in
  modded-nanogpt, so every block starts as the identity. It is off by
  default because it is not neutral between optimizers: on the LM example
  (600 steps) it made two seeds of ``muon`` agree to 0.0012 nats/byte
  instead of 0.0106 and lowered its loss (1.549 vs 1.556), but raised
  AdamW's by 0.17 (1.908 vs 1.734, mean of two seeds; every learning rate
  of the sweep was worse).
  """

  def __init__(
      self, vocab_size: int, d_model: int, num_layers: int, num_heads: int,
      mlp_ratio: int = 4, *, zero_init_residual: bool = False,
      rngs: nnx.Rngs,
  ):
    self.embed = nnx.Embed(
        vocab_size, d_model,
        embedding_init=nnx.initializers.normal(stddev=1.0), rngs=rngs,
    )
    self.blocks = nnx.List([
        Block(d_model, num_heads, mlp_ratio,
              zero_init_residual=zero_init_residual, rngs=rngs)
        for _ in range(num_layers)
    ])
    self.norm = nnx.RMSNorm(d_model, rngs=rngs)
    self.lm_head = nnx.Linear(
        d_model, vocab_size, use_bias=False,
        kernel_init=nnx.initializers.zeros_init(), rngs=rngs,
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits of shape ``(batch, seq, vocab)`` for int tokens ``(batch, seq)``."""
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x)
    return self.lm_head(self.norm(x))


def create_model(
    config: ml_collections.ConfigDict, *, num_outputs: int, rngs: nnx.Rngs
) -> nnx.Module:
  """Builds the model named by ``config.name`` (``mlp``, ``cnn``, ``lm``).

  ``config.init`` (optional): ``"default"``, the modules' initializers, or
  ``"scion"``, :func:`ortho_optax.scion_init` with the ``config.scion_preset``
  norms (default ``"gpt"``) redrawing every matrix.
  """
  init = config.get("init", "default")
  if init not in ("default", "scion"):
    raise ValueError(
        f"`model.init` must be 'default' or 'scion'; got {init!r}."
    )
  if init == "scion" and config.get("zero_init_residual", False):
    raise ValueError(
        "`model.zero_init_residual=True` and `model.init='scion'` exclude"
        " each other: the Scion init redraws the zeroed projections."
    )
  if config.name == "mlp":
    model = MLP(64, config.hidden, config.depth, num_outputs, rngs=rngs)
  elif config.name == "cnn":
    model = CNN(1, config.features, config.hidden, num_outputs, rngs=rngs)
  elif config.name == "lm":
    model = TransformerLM(
        num_outputs, config.d_model, config.num_layers, config.num_heads,
        config.mlp_ratio,
        zero_init_residual=config.get("zero_init_residual", False), rngs=rngs,
    )
  else:
    raise ValueError(
        f"`model.name` must be one of 'mlp', 'cnn', 'lm'; got {config.name!r}."
    )
  if init == "scion":
    params = nnx.state(model, nnx.Param)
    nnx.update(model, ortho_optax.scion_init(
        rngs.params(), params, preset=config.get("scion_preset", "gpt")
    ))
  return model
