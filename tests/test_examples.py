"""The examples run end to end: metrics, checkpoints, plot and resume.

Each example's default configuration is loaded, shrunk to a few steps and a
tiny model, and trained in ``tmp_path``.
"""

import importlib
import json
import math
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from examples import train  # noqa: E402


def _config(name: str, steps: int = 4):
  """``configs/<name>.py``'s default configuration, shrunk to ``steps``."""
  config = importlib.import_module(f"configs.{name}").get_config()
  config.num_train_steps = steps
  config.log_every_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.progress_bar = False
  if config.task == "lm":
    config.batch_size = 4
    config.data.seq_len = 16
    config.eval.num_sequences = 8
    config.eval.batch_size = 8
    config.model.d_model = 16
    config.model.num_layers = 1
    config.model.num_heads = 2
  else:
    config.batch_size = 16
    config.model.hidden = 16
  return config


def _records(workdir, split):
  return [r for r in train.read_metrics(workdir) if r["split"] == split]


@pytest.mark.parametrize(
    "name,optimizer",
    [
        ("digits_mlp", "adamw"),
        ("digits_cnn", "optax_muon"),
        ("lm", None),  # The default: ortho_optax.muon.
    ],
)
def test_default_config_runs(tmp_path, name, optimizer):
  config = _config(name)
  if optimizer is not None:
    config.optimizer.name = optimizer
  summary = train.train_and_evaluate(config, tmp_path)

  assert summary["final_step"] == 4 and summary["start_step"] == 0
  assert [r["step"] for r in _records(tmp_path, "train")] == [2, 4]
  evals = _records(tmp_path, "eval")
  assert [r["step"] for r in evals] == [2, 4]
  assert all(np.isfinite(r["loss"]) for r in evals)
  if config.task == "digits":
    assert 0.0 <= evals[-1]["accuracy"] <= 1.0
  assert (tmp_path / "checkpoints" / "4").is_dir()
  assert (tmp_path / train.PLOT_FILE).stat().st_size > 0
  saved = json.loads((tmp_path / train.SUMMARY_FILE).read_text())
  assert saved["best_eval_loss"] == min(r["loss"] for r in evals)


def test_resume_continues_at_saved_step(tmp_path):
  """4 steps, then resume to 6, equals 6 uninterrupted steps."""
  def config(steps):
    c = _config("digits_mlp", steps)
    c.optimizer.name = "optax_muon"
    c.optimizer.schedule = "constant"  # The same for both lengths.
    c.checkpoint_every_steps = 4
    return c

  straight = train.train_and_evaluate(config(6), tmp_path / "straight")
  train.train_and_evaluate(config(4), tmp_path / "resumed")
  resumed = train.train_and_evaluate(config(6), tmp_path / "resumed")

  assert resumed["start_step"] == 4 and resumed["final_step"] == 6
  steps = [r["step"] for r in _records(tmp_path / "resumed", "train")]
  assert steps == [2, 4, 6]  # Nothing repeated or lost.
  np.testing.assert_allclose(
      resumed["final_eval"]["loss"], straight["final_eval"]["loss"],
      rtol=1e-5,
  )


def test_resume_with_another_optimizer_is_a_clear_error(tmp_path):
  train.train_and_evaluate(_config("digits_mlp", 2), tmp_path)
  config = _config("digits_mlp", 4)
  config.optimizer.name = "optax_muon"
  with pytest.raises(ValueError, match=r"optimizer.name \('muon' ->"):
    train.train_and_evaluate(config, tmp_path)
  # A checkpoint written before the configuration was saved with it: the
  # workdir's config.json says what trained it.
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "config")
  with pytest.raises(ValueError, match=r"optimizer.name \('muon' ->"):
    train.train_and_evaluate(config, tmp_path)
  # Neither: the restore itself finds that the state does not fit.
  (tmp_path / "config.json").unlink()
  with pytest.raises(ValueError, match="does not match"):
    train.train_and_evaluate(config, tmp_path)


def test_pome_example(tmp_path):
  from examples import pome_digits  # pylint: disable=g-import-not-at-top

  config = importlib.import_module("configs.pome_digits").get_config()
  for c in (config.pretrain, config.finetune):
    c.num_train_steps = 4
    c.eval_every_steps = c.log_every_steps = c.checkpoint_every_steps = 4
    c.model.hidden = 16
    c.plot = False
  config.pome.rank_ratios = (0.5,)
  config.pome.alphas = (1.0,)
  out = pome_digits.run(config, tmp_path)

  names = [r["model"] for r in out["rows"]]
  assert names == ["pretrained", "fine-tuned", "POME r=0.5 alpha=1"]
  assert all(0.0 <= r["shifted_accuracy"] <= 1.0 for r in out["rows"])
  assert (tmp_path / "pome.md").read_text() == out["report"]
  assert (tmp_path / "finetune" / "checkpoints" / "4").is_dir()


def test_compare_writes_table_and_plot(tmp_path):
  from examples import compare  # pylint: disable=g-import-not-at-top

  config = compare.comparison_config(_config("lm"))
  out = compare.compare(
      config, tmp_path, ["adamw", "optax_muon", "no_such_optimizer"],
      lr_factors=[1.0], seeds=[0, 1], results_dir=tmp_path / "results",
  )
  rows = {r["optimizer"]: r for r in out["rows"]}
  assert sorted(rows) == ["adamw", "optax_muon"]
  assert rows["adamw"]["fraction_of_adamw_steps"] == 1.0
  assert len(rows["optax_muon"]["seed_losses"]) == 2
  # Two seeds: the standard error of their mean is half their difference.
  assert rows["optax_muon"]["seed_sem"] == pytest.approx(
      rows["optax_muon"]["seed_spread"] / 2)
  table = (tmp_path / "results" / "compare.md").read_text()
  assert "| optax_muon |" in table and "no_such_optimizer" in table
  assert f"{rows['adamw']['best_val_loss']:.4f} ± " in table
  assert (tmp_path / "results" / "compare.png").stat().st_size > 0
  # A second call reuses the finished runs.
  again = compare.compare(config, tmp_path, ["adamw"], [1.0], [0, 1])
  assert again["rows"][0]["best_val_loss"] == rows["adamw"]["best_val_loss"]


def test_steps_to_reach_interpolates():
  from examples import compare  # pylint: disable=g-import-not-at-top

  steps, losses = np.array([10.0, 20.0, 30.0]), np.array([3.0, 2.0, 1.0])
  assert compare.steps_to_reach(steps, losses, 1.5) == 25.0
  assert compare.steps_to_reach(steps, losses, 3.5) == 10.0
  assert compare.steps_to_reach(steps, losses, 0.5) is None


def test_compare_checks_report_the_targets():
  from examples import compare  # pylint: disable=g-import-not-at-top

  def row(name, loss, frac):
    return {"optimizer": name, "best_val_loss": loss,
            "fraction_of_adamw_steps": frac}

  lines = compare.checks([
      row("adamw", 1.70, 1.0), row("optax_muon", 1.55, 0.48),
      row("muon", 1.553, 0.47), row("adamuon", 1.69, 0.79),
      row("root", 1.538, 0.45), row("auon", 1.76, None),
      row("scion", 1.545, 0.6),
  ])
  text = "\n".join(lines)
  assert "optax_muon 0.48 (yes)" in text and "adamuon 0.79 (no)" in text
  assert "muon 0.47 (yes)" in text
  assert "other methods, x AdamW's steps: auon not reached, scion 0.60" in text
  assert "muon - optax_muon: +0.0030 nats/byte (target: <= +0.005: yes)" in text
  assert "best of ours: root 1.5380, 0.0120 below optax_muon" in text
  assert "(target: >= 0.01: yes)" in text
  # Without AdamW and optax's Muon there is nothing to check.
  assert compare.checks([row("muon", 1.5, None)]) == []


@pytest.mark.parametrize("zero", [True, False])
def test_lm_zero_init_residual(zero):
  """Only the residual branches' last projections start at zero; the other
  kernels draw the same random values either way."""
  from flax import nnx

  from examples import models

  def build(z):
    return models.TransformerLM(
        256, 16, 2, 2, zero_init_residual=z, rngs=nnx.Rngs(0))

  model, other = build(zero), build(not zero)
  for block, block2 in zip(model.blocks, other.blocks):
    for kernel in (block.attn.proj.kernel[...], block.out.kernel[...]):
      assert np.all(np.asarray(kernel) == 0) == zero
    np.testing.assert_array_equal(block.attn.qkv.kernel[...],
                                  block2.attn.qkv.kernel[...])
    np.testing.assert_array_equal(block.fc.kernel[...], block2.fc.kernel[...])


def test_model_scion_init():
  """``model.init='scion'`` redraws every matrix on its Scion-norm sphere and
  keeps the norm gains; an unknown init is a clear error."""
  from flax import nnx

  from configs import digits_mlp
  from configs import lm
  from examples import models

  config = lm.get_config().model
  config.d_model, config.num_layers, config.num_heads = 16, 1, 2
  config.init = "scion"
  model = models.create_model(config, num_outputs=256, rngs=nnx.Rngs(0))
  sv = np.linalg.svd(np.asarray(model.blocks[0].fc.kernel[...]),
                     compute_uv=False)
  np.testing.assert_allclose(sv, 3.0 * 2.0, rtol=1e-5)  # radius 3, sqrt(4)
  np.testing.assert_array_equal(np.abs(model.embed.embedding[...]), 1.0)
  np.testing.assert_allclose(np.abs(model.lm_head.kernel[...]), 10.0 / 16,
                             rtol=1e-6)
  np.testing.assert_array_equal(model.norm.scale[...], 1.0)
  config.init = "xavier"
  with pytest.raises(ValueError, match="`model.init`"):
    models.create_model(config, num_outputs=256, rngs=nnx.Rngs(0))
  config.init, config.zero_init_residual = "scion", True
  with pytest.raises(ValueError, match="zero_init_residual"):
    models.create_model(config, num_outputs=256, rngs=nnx.Rngs(0))
  # The digits MLP with the "mlp" preset: input Spectral(max=True) radius 1
  # on the (64, hidden) kernel gives max(1, sqrt(hidden / 64)).
  mlp = digits_mlp.get_config().model
  mlp.init = "scion"
  model = models.create_model(mlp, num_outputs=10, rngs=nnx.Rngs(0))
  first = jax.tree.leaves(nnx.state(model, nnx.Param))
  kernels = [x for x in first if x.ndim == 2 and x.shape[0] == 64]
  sv = np.linalg.svd(np.asarray(kernels[0]), compute_uv=False)
  np.testing.assert_allclose(sv, max(1.0, math.sqrt(mlp.hidden / 64)),
                             rtol=1e-5)


@pytest.mark.parametrize("lo,hi,length,gap,want", [
    # loss.png of the LM: labels at 2, 3 and 4 only before.
    (1.45, 4.6, 2.8, 0.28, [1.5, 2, 2.5, 3, 4]),
    # compare.png's sweep over 0.01-0.04: "2x10^-2 3x10^-2 4x10^-2" ran
    # into each other before.
    (0.009, 0.045, 5.5, 0.6, [0.01, 0.012, 0.015, 0.02, 0.025, 0.03, 0.04]),
    (0.0013, 0.12, 5.5, 0.6, [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]),
    (1e-6, 3.0, 2.8, 0.28, [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1]),
])
def test_log_ticks_are_readable(lo, hi, length, gap, want):
  """Plain round ticks, never closer on the page than ``gap`` inches."""
  from examples import plotting  # pylint: disable=g-import-not-at-top

  ticks = plotting.log_ticks(lo, hi, length, gap)
  assert ticks == pytest.approx(want)
  inches = np.diff(np.log10(ticks)) * length / math.log10(hi / lo)
  assert inches.min() >= gap


def test_log_ticks_of_a_narrow_range():
  """Narrower than any series' spacing: evenly spaced round numbers."""
  from examples import plotting  # pylint: disable=g-import-not-at-top

  ticks = plotting.log_ticks(1.52, 1.58, 3.0, 0.28)
  assert len(ticks) >= 2 and all(1.52 <= t <= 1.58 for t in ticks)
  assert all(round(t, 2) == t for t in ticks)
