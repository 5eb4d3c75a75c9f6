"""examples/transfer.py: one learning rate for all, and across width."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from examples import cli  # noqa: E402
from examples import compare  # noqa: E402
from examples import optimizers  # noqa: E402
from examples import transfer  # noqa: E402


def _row(name, best_lr, runs, edge=False, seeds=(0, 1)):
  """A row of compare.json: ``runs`` is ``{(lr, seed): value}``."""
  return {
      "optimizer": name, "best_lr": best_lr, "seeds": list(seeds),
      "best_values": [runs.get((best_lr, s)) for s in seeds],
      "edge_of_sweep": edge,
      "runs": [{"lr": lr, "seed": s, "value": v, "loss": v}
               for (lr, s), v in sorted(runs.items())],
  }


def _write_best(path, task, rows, metric="loss"):
  (path / task).mkdir(parents=True, exist_ok=True)
  (path / task / "compare.json").write_text(json.dumps(
      {"task": task, "metric": metric, "rows": rows}))


def test_kwargs_go_to_the_factories_that_take_them():
  kwargs = transfer.parse_kwargs(
      ["update_rms=0.2", "consistent_rms=0.2", "mu_dtype=bfloat16"])
  assert kwargs == {"update_rms": 0.2, "consistent_rms": 0.2,
                    "mu_dtype": "bfloat16"}
  assert optimizers.accepted_kwargs("muon", kwargs) == {
      "update_rms": 0.2, "mu_dtype": "bfloat16"}
  assert optimizers.accepted_kwargs("optax_muon", kwargs) == {
      "consistent_rms": 0.2, "mu_dtype": "bfloat16"}
  assert optimizers.accepted_kwargs("adamw", kwargs) == {
      "mu_dtype": "bfloat16"}
  assert optimizers.accepted_kwargs("adamw", None) == {}
  # The run's configuration records what the optimizer took, and nothing
  # for no extra arguments (the comparison's plain runs are unchanged).
  config = compare.comparison_config(
      compare.load_config("configs/lm.py"), steps=2, quick=True)
  c = compare.run_config(config, "muon", 0.003, 1, kwargs)
  assert c.optimizer.kwargs.to_dict() == {"update_rms": 0.2,
                                          "mu_dtype": "bfloat16"}
  assert (c.optimizer.name, c.optimizer.learning_rate, c.seed) == (
      "muon", 0.003, 1)
  assert compare.run_config(config, "muon", 0.02, 0).to_json_best_effort() \
      == compare.run_config(config, "muon", 0.02, 0, {}).to_json_best_effort()
  assert not config.optimizer.kwargs  # Not changed in place.
  with pytest.raises(cli.ConfigError, match="no optimizer of adamw"):
    transfer.parse_kwargs(["update_rms=0.2"], ["adamw"])
  with pytest.raises(cli.ConfigError, match="is not key=value"):
    transfer.parse_kwargs(["update_rms"])


def test_width_config_keeps_the_head_dimension():
  base = compare.load_config("configs/lm.py")
  assert transfer.head_dim(base) == 32
  wide = transfer.width_config(base, 256, transfer.head_dim(base))
  assert (wide.model.d_model, wide.model.num_heads) == (256, 8)
  assert (base.model.d_model, base.model.num_heads) == (128, 4)
  want = base.to_dict()
  want["model"].update(d_model=256, num_heads=8)
  assert wide.to_dict() == want  # Nothing else changes.
  narrow = transfer.width_config(base, 64, 32)
  assert (narrow.model.d_model, narrow.model.num_heads) == (64, 2)
  assert transfer.width_task(compare.TASKS["lm"], 64) == compare.TaskSpec(
      "lm_d64", "configs/lm.py", "loss")
  with pytest.raises(cli.ConfigError, match="multiple of the head"):
    transfer.width_config(base, 48, 32)
  with pytest.raises(cli.ConfigError, match="language-model task"):
    transfer.width_config(compare.load_config("configs/digits_cnn.py"), 64,
                          32)


def test_common_table_gaps_are_paired_by_seed(tmp_path):
  best = {
      "muon": _row("muon", 0.02, {(0.02, 0): 1.50, (0.02, 1): 1.60}),
      "scion": _row("scion", 0.01, {(0.01, 0): 1.40, (0.01, 1): 1.46},
                    edge=True),
  }
  table = {"task": "lm", "metric": "loss", "rows": [
      {"optimizer": "muon", "default_lr": 0.003, "seeds": [0, 1],
       "default_values": [1.52, 1.63]},
      {"optimizer": "scion", "default_lr": 0.003, "seeds": [0, 1],
       "default_values": [1.45, 1.50]},
      {"optimizer": "adamw", "default_lr": 0.003, "seeds": [0, 1],
       "default_values": [1.7, None]},
  ]}
  kwargs = {"update_rms": 0.2}
  rows = transfer.common_rows(table, best, kwargs, 0.03)
  muon, scion, adamw = rows
  assert muon["gap"] == pytest.approx(0.025)  # (0.02 + 0.03) / 2.
  assert muon["within"] and muon["kwargs"] == kwargs
  assert scion["gap"] == pytest.approx(0.045) and not scion["within"]
  assert adamw["kwargs"] == {} and adamw["gap"] is None
  assert adamw["values"] == {0: 1.7} and not adamw["within"]
  md = transfer.common_markdown(rows, {"lm": "**lm**: an LM."}, 0.003,
                                kwargs, 0.03, [0, 1])
  assert "| lm | muon | update_rms=0.2 | 1.5750 | 0.02 | 1.5500 |" \
      " +0.0250 | yes |" in md
  assert "| lm | scion | update_rms=0.2 | 1.4750 | 0.01 (edge) | 1.4300 |" \
      " +0.0450 | no |" in md
  assert "| lm | adamw | - | 1.7000 | - | - | - | - (no own best) |" in md
  assert "- lm: 1 of 3 within 0.03 nats/byte." in md
  # Several results directories: an optimizer's row from the first one.
  _write_best(tmp_path / "a", "lm", [best["muon"]])
  _write_best(tmp_path / "b", "lm", [_row("muon", 0.04, {}), best["scion"]])
  assert transfer.read_best([tmp_path / "a", tmp_path / "b"], "lm") == best
  assert transfer.read_best(tmp_path / "a", "lm_deep") == {}
  # Accuracy: lower is worse; seeds that only one side has are left out.
  acc = transfer.worse_by({0: 0.90, 1: 0.95}, {0: 0.93}, "accuracy")
  assert acc == pytest.approx(0.03)
  assert transfer.worse_by({0: 1.0}, {1: 0.9}, "loss") == pytest.approx(0.1)
  assert transfer.worse_by({}, {1: 0.9}, "loss") is None


def test_width_rows_from_the_sweep_and_the_main_comparison():
  best = {"muon": _row("muon", 0.04, {(0.02, 0): 1.55, (0.04, 0): 1.50,
                                      (0.04, 1): 1.52})}
  rates, notes = transfer.chosen_rates(["muon", "scion", "adamuon"], best,
                                       {"scion": 0.01})
  assert rates == {"muon": 0.04, "scion": 0.01,
                   "adamuon": optimizers.default_learning_rate("adamuon")}
  assert notes == {"muon": "", "scion": "given",
                   "adamuon": "default: not in --best_from"}
  base = transfer.base_width_rows(best, 128, {"muon": 0.02}, notes, [0],
                                  "lm", "loss", 0.02)
  assert base[0]["gap"] == pytest.approx(0.05) and not base[0]["within"]
  table = {"task": "lm_d256", "metric": "loss", "rows": [{
      "optimizer": "muon", "default_lr": 0.04, "default_mean": 1.41,
      "best_lr": 0.02, "best_mean": 1.40, "edge_of_sweep": False,
      "seeds": [0], "default_worse_than_best": [0.01]}]}
  rows = transfer.width_rows(table, 256, notes, 0.02)
  assert rows[0]["gap"] == pytest.approx(0.01) and rows[0]["within"]
  md = transfer.width_markdown(base + rows, {"lm_d256": ""}, 128, 0.02, [0])
  assert "| 128 | muon | 0.02 | 1.5500 | 0.04 | 1.5000 | +0.0500 | no |" in md
  assert "| 256 | muon | 0.04 | 1.4100 | 0.02 | 1.4000 | +0.0100 | yes |" in md
  assert "- 1 of 1 within 0.02 nats/byte at the other widths." in md


def test_run_common_trains_with_the_extra_arguments(tmp_path):
  """A tiny digits run at one rate: its configuration records
  ``update_rms``; the table, its JSON and transfer.md are written, and a
  second call reuses the run."""
  best = tmp_path / "best"
  _write_best(best, "digits_cnn", [_row("muon", 0.02, {(0.02, 0): 0.5},
                                        seeds=[0])], "accuracy")
  args = dict(lr_factors=[1.0], steps=2, quick=True,
              results_dir=tmp_path / "results")
  out = transfer.run_common(
      [compare.TASKS["digits_cnn"]], tmp_path / "runs", best,
      ["muon"], 0.003, {"update_rms": 0.2}, [0], **args)
  [muon] = out["rows"]
  config = json.loads((tmp_path / "runs" / "digits_cnn" / "runs" / "muon"
                       / "lr0.003" / "seed0" / "config.json").read_text())
  assert config["optimizer"]["kwargs"] == {"update_rms": 0.2}
  assert config["optimizer"]["learning_rate"] == 0.003
  assert muon["kwargs"] == {"update_rms": 0.2}
  assert muon["values"] == {0: muon["value"]}
  assert muon["gap"] == pytest.approx(0.5 - muon["value"])
  assert muon["within"] == (muon["gap"] <= 0.03)
  results = tmp_path / "results"
  saved = json.loads((results / "transfer_common.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(out["rows"]))
  assert (results / "transfer_common.md").read_text() == out["markdown"]
  report = (results / "transfer.md").read_text()
  assert "## One learning rate for every optimizer" in report
  assert "## Learning rates across width" not in report
  again = transfer.run_common(
      [compare.TASKS["digits_cnn"]], tmp_path / "runs", best,
      ["muon"], 0.003, {"update_rms": 0.2}, [0], reuse_only=True, **args)
  assert again["rows"] == out["rows"]


@pytest.mark.slow
def test_run_width_trains_the_lm_at_another_width(tmp_path):
  """A tiny LM at width 32 (one head of 32), swept around the rate chosen
  at the task's own width."""
  best = tmp_path / "best"
  _write_best(best, "lm", [_row("muon", 0.04, {(0.04, 0): 5.0}, seeds=[0])])
  out = transfer.run_width(
      compare.TASKS["lm"], tmp_path / "runs", best, ["muon"], [32],
      [1.0, 2.0], [0], steps=2, quick=True, extend_edges=0)
  base, wide = out["rows"]
  assert (base["width"], base["gap"]) == (64, 0.0)  # --quick's width.
  assert wide["width"] == 32 and wide["chosen_lr"] == 0.04
  run = tmp_path / "runs" / "lm_d32" / "runs" / "muon"
  config = json.loads((run / "lr0.04" / "seed0" / "config.json").read_text())
  assert (config["model"]["d_model"], config["model"]["num_heads"]) == (32, 1)
  assert (run / "lr0.08" / "seed0" / "summary.json").exists()
  assert wide["gap"] >= 0.0 and wide["best_lr"] in (0.04, 0.08)
  assert "| 32 | muon | 0.04 |" in out["markdown"]
  assert "## Learning rates across width" in (
      tmp_path / "runs" / "transfer.md").read_text()
