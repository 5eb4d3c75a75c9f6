"""Data for the examples: scikit-learn's digits and a byte-level text corpus.

Everything is held in memory as NumPy arrays. Batches are a pure function of
``(seed, step)``, so a run resumed from a checkpoint at step ``s`` sees exactly
the batches an uninterrupted run would have seen after step ``s``.
"""

import dataclasses
import pathlib

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = "examples/data/corpus.txt"


def resolve_path(path: str) -> pathlib.Path:
  """Resolves ``path`` against the working directory, then the repository."""
  p = pathlib.Path(path).expanduser()
  if p.is_file():
    return p
  if p.is_absolute():
    raise FileNotFoundError(f"`data.path`={path!r}: no such file.")
  q = REPO_ROOT / p
  if q.is_file():
    return q
  raise FileNotFoundError(
      f"`data.path`={path!r} exists neither relative to the working directory"
      f" nor to the repository root {REPO_ROOT}."
  )


# ----------------------------------------------------------------------------
# Digits (8x8 grey-scale images of the digits 0-9, 1797 examples).
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DigitsData:
  """The digits split into a training and a test set.

  Attributes:
    train_x: float32 images of shape ``(n, 8, 8, 1)`` in ``[0, 1]``.
    train_y: int32 labels of shape ``(n,)``.
    test_x: as ``train_x``, the held-out images.
    test_y: as ``train_y``, the held-out labels.
    num_classes: number of classes (10).
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int = 10

  def train_batch(self, step: int, batch_size: int, seed: int) -> dict:
    """The training batch of step ``step``: epochs of shuffled examples."""
    n = len(self.train_y)
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[i * batch_size:(i + 1) * batch_size]
    return {"x": self.train_x[idx], "y": self.train_y[idx]}

  def eval_batches(self, batch_size: int):
    """Yields the whole test set in batches (the last one may be smaller)."""
    for i in range(0, len(self.test_y), batch_size):
      yield {
          "x": self.test_x[i:i + batch_size],
          "y": self.test_y[i:i + batch_size],
      }


def shift_digits(data: DigitsData, shift: str) -> DigitsData:
  """A shifted version of the digits task (for fine-tuning experiments).

  Args:
    data: the original task.
    shift: ``"none"``; ``"permute"``: labels mapped by ``y -> (3 * y + 1) % 10``
      (a fixed permutation of the classes); ``"invert"``: pixel intensities
      inverted, ``x -> 1 - x``; ``"roll"``: images rolled by two pixels to
      the right and one down.

  Returns:
    The shifted task, same split.
  """
  def fx(x):
    if shift == "invert":
      return 1.0 - x
    if shift == "roll":
      return np.roll(x, (1, 2), axis=(1, 2))
    return x

  def fy(y):
    if shift == "permute":
      return ((3 * y + 1) % data.num_classes).astype(np.int32)
    return y

  if shift not in ("none", "permute", "invert", "roll"):
    raise ValueError(
        f"`shift` must be one of 'none', 'permute', 'invert', 'roll'; got"
        f" {shift!r}."
    )
  return DigitsData(
      fx(data.train_x), fy(data.train_y), fx(data.test_x), fy(data.test_y),
      data.num_classes,
  )


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> DigitsData:
  """Loads scikit-learn's digits (shipped with the package, no download)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  perm = np.random.default_rng(split_seed).permutation(len(y))
  n_test = int(round(test_fraction * len(y)))
  test, train = perm[:n_test], perm[n_test:]
  return DigitsData(x[train], y[train], x[test], y[test])


# ----------------------------------------------------------------------------
# Byte-level text.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextData:
  """A byte-level corpus split into training and validation text.

  The file is cut into chunks of ``chunk_bytes``; every ``val_every``-th chunk
  is held out, so both splits cover the whole file.

  Attributes:
    train: uint8 bytes of the training text.
    val: uint8 bytes of the validation text.
    vocab_size: 256 (raw bytes).
  """

  train: np.ndarray
  val: np.ndarray
  vocab_size: int = 256

  def train_batch(
      self, step: int, batch_size: int, seq_len: int, seed: int
  ) -> dict:
    """Random windows of ``seq_len + 1`` bytes, a function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(self.train) - seq_len - 1, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return {"tokens": self.train[idx].astype(np.int32)}

  def eval_batches(self, batch_size: int, seq_len: int, num_sequences: int):
    """Yields a fixed validation set: evenly spaced windows of the val text.

    Args:
      batch_size: sequences per batch.
      seq_len: tokens per sequence (windows have ``seq_len + 1`` bytes).
      num_sequences: how many windows; at most the number of disjoint
        windows in the validation text.

    Yields:
      ``{"tokens": int32 array (batch, seq_len + 1)}``.
    """
    max_seqs = (len(self.val) - 1) // (seq_len + 1)
    if num_sequences > max_seqs:
      raise ValueError(
          f"`eval.num_sequences`={num_sequences} windows of {seq_len + 1}"
          f" bytes do not fit in the {len(self.val)} validation bytes (at most"
          f" {max_seqs})."
      )
    stride = max_seqs // num_sequences * (seq_len + 1)
    starts = np.arange(num_sequences) * stride
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    tokens = self.val[idx].astype(np.int32)
    for i in range(0, num_sequences, batch_size):
      yield {"tokens": tokens[i:i + batch_size]}


def load_text(
    path: str = DEFAULT_CORPUS, chunk_bytes: int = 4096, val_every: int = 10
) -> TextData:
  """Reads a text file as bytes and splits it into train and validation."""
  if val_every < 2:
    raise ValueError(f"`data.val_every` must be >= 2; got {val_every}.")
  raw = np.frombuffer(resolve_path(path).read_bytes(), dtype=np.uint8)
  n_chunks = -(-len(raw) // chunk_bytes)
  chunks = [raw[i * chunk_bytes:(i + 1) * chunk_bytes] for i in range(n_chunks)]
  val = [c for i, c in enumerate(chunks) if i % val_every == val_every - 1]
  train = [c for i, c in enumerate(chunks) if i % val_every != val_every - 1]
  if not val or not train:
    raise ValueError(
        f"`data.path`={path!r} has {len(raw)} bytes: too short for chunks of"
        f" {chunk_bytes} bytes with every {val_every}th held out."
    )
  return TextData(np.concatenate(train), np.concatenate(val))
