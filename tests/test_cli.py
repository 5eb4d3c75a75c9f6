"""What a user of the examples' command line sees.

A resumed run refuses a changed configuration (naming the changed settings)
but takes the settings that are safe to change and says where it resumes; a
mistake on the command line is one line, with no workdir left behind; the
progress bar ends on the final evaluation.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from examples import cli  # noqa: E402
from examples import train  # noqa: E402


def _config(steps: int = 2):
  """The digits MLP at a few steps, tiny: the fastest full run."""
  config = importlib.import_module("configs.digits_mlp").get_config()
  config.num_train_steps = steps
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.progress_bar = False
  config.plot = False
  config.batch_size = 16
  config.model.hidden = 16
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A workdir holding a run finished at step 2, and its files."""
  workdir = tmp_path_factory.mktemp("finished")
  train.train_and_evaluate(_config(2), workdir)
  files = ("config.json", train.SUMMARY_FILE, train.METRICS_FILE)
  return workdir, {f: (workdir / f).read_text() for f in files}


def test_resume_refuses_changed_settings(finished):
  workdir, files = finished
  config = _config(2)
  config.optimizer.learning_rate = 0.04
  config.model.hidden = 32
  config.optimizer.kwargs = {"weight_decay": 0.1}
  with pytest.raises(cli.ConfigError) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  assert "\n" not in message
  assert "at step 2" in message
  assert "optimizer.learning_rate (None -> 0.04)" in message
  assert "model.hidden (16 -> 32)" in message
  assert "optimizer.kwargs.weight_decay ((unset) -> 0.1)" in message
  assert "num_train_steps" in message  # The safe settings are listed.
  for name in ("seed", "batch_size", "optimizer.name"):
    assert f" {name} (" not in message  # Unchanged ones are not named.
  # Nothing in the workdir was rewritten.
  for name, text in files.items():
    assert (workdir / name).read_text() == text, name


def test_config_changes_lists_each_leaf():
  old = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "gone": 0, "num_train_steps": 1}
  new = {"a": 1, "b": {"c": 3, "d": [1, 2], "e": {}}, "num_train_steps": 9,
         "f": {"g": None}}
  assert train.config_changes(old, new) == [
      ("b.c", 2, 3), ("f.g", "(unset)", None), ("gone", 0, "(unset)")]


def test_resume_takes_safe_settings_and_says_so(tmp_path, capsys):
  train.train_and_evaluate(_config(2), tmp_path)
  capsys.readouterr()
  config = _config(4)
  config.log_every_steps = 2
  config.eval_every_steps = 1
  config.checkpoint_every_steps = 1
  config.eval.batch_size = 7
  config.max_checkpoints_to_keep = 3
  config.progress_bar = True
  summary = train.train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert summary["start_step"] == 2 and summary["final_step"] == 4
  assert "resuming from step 2\n" in out
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["num_train_steps"] == 4
  # A finished run, rerun: it resumes at its end and trains nothing.
  summary = train.train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert "resuming from step 4: nothing to train" in out
  assert summary["start_step"] == 4 and summary["sec_per_step"] is None


def test_fresh_run_prints_what_runs(tmp_path, capsys):
  config = _config(1)
  config.save_checkpoints = False
  config.optimizer.name = "muon"
  train.train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert "devices: 8 x cpu (1 process), no mesh" in out
  assert "parameters; 1 steps of 16 examples" in out
  assert "optimizer: muon(0.02, adam_learning_rate=0.003)" in out
  assert f"workdir: {tmp_path.resolve()}: new run" in out


def test_progress_bar_ends_on_the_final_eval(tmp_path, capsys):
  config = _config(3)
  config.log_every_steps = 1
  config.save_checkpoints = False
  config.progress_bar = True
  summary = train.train_and_evaluate(config, tmp_path)
  bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
  # Evaluations at steps 2 and 3 (the end): the bar shows step 3's.
  assert f"eval={summary['final_eval']['loss']:.4f}" in bar, bar
  evals = [r for r in train.read_metrics(tmp_path) if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [2, 3]
  assert f"{evals[0]['loss']:.4f}" != f"{evals[1]['loss']:.4f}"


@pytest.mark.parametrize("setting,value,named", [
    ("data.path", "/no/such/corpus.txt", "`data.path`='/no/such/corpus.txt'"),
    ("optimizer.name", "adamw2", "`optimizer.name`='adamw2'"),
    ("optimizer.kwargs", {"no_such_argument": 1}, "`optimizer.kwargs`"),
])
def test_bad_setting_is_named_and_leaves_no_workdir(tmp_path, setting, value,
                                                    named):
  config = importlib.import_module("configs.lm").get_config()
  section, key = setting.split(".")
  config[section][key] = value
  workdir = tmp_path / "run"
  with pytest.raises(cli.ConfigError) as info:
    train.train_and_evaluate(config, workdir)
  assert named in str(info.value) and "\n" not in str(info.value)
  assert not workdir.exists()


def test_url_workdir_is_refused_by_name(tmp_path, monkeypatch):
  # pathlib would turn gs://bucket/run into the local gs:/bucket/run.
  monkeypatch.chdir(tmp_path)
  config = importlib.import_module("configs.lm").get_config()
  with pytest.raises(cli.ConfigError, match=r"^`workdir`='gs://bucket/run' is"
                     r" a URL; .* shared file system\)\.$"):
    train.train_and_evaluate(config, "gs://bucket/run")
  assert not (tmp_path / "gs:").exists()


def _main(*args, workdir, config="configs/lm.py"):
  """``examples/main.py`` with ``args``: (return code, stderr lines)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "examples/main.py", f"--config={config}",
       f"--workdir={workdir}", *args],
      cwd=REPO, env=env, capture_output=True, text=True, check=False,
  )
  return proc.returncode, proc.stderr.strip().splitlines()


# These fail while the flags parse, before JAX loads: about a second each.
@pytest.mark.parametrize("args,config,line", [
    (["--config.optimizr.name=adamw"], "configs/lm.py",
     "unknown option --config.optimizr.name: the configuration has no field"
     " 'optimizr'; Did you mean \"optimizer\" instead of \"optimizr\"?"),
    (["--config.optimizer.nme=adamw"], "configs/lm.py",
     "unknown option --config.optimizer.nme: the configuration has no field"
     " 'nme'; Did you mean \"name\" instead of \"nme\"?"),
    (["--config.seed=abc"], "configs/lm.py",
     "flag --config.seed=abc: invalid literal for int() with base 10: 'abc'"
     " (--helpfull lists the options)"),
    ([], "configs/no_such_config.py",
     "--config: cannot load the configuration file: [Errno 2] No such file"
     " or directory: 'configs/no_such_config.py'"),
    (["extra"], "configs/lm.py",
     "unexpected arguments 'extra' (options are written --name=value)"),
], ids=["field", "subfield", "value", "config_file", "positional"])
def test_command_line_mistake_is_one_line(tmp_path, args, config, line):
  workdir = tmp_path / "run"
  code, err = _main(*args, workdir=workdir, config=config)
  assert code == 2
  assert err == [f"main.py: error: {line}"]
  assert not workdir.exists()


def test_unknown_field_at_flag_definition_is_one_line(monkeypatch, capsys):
  """compare.py and pome_digits.py define --config with a default file:
  ml_collections applies the overrides then, before parsing."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(sys, "argv", ["compare.py", "--config.optimzer.name=x"])
  with pytest.raises(SystemExit) as info, cli.flag_definitions():
    config_flags.DEFINE_config_file(
        "config", str(REPO / "configs" / "lm.py"), "",
        flag_values=flags.FlagValues(), lock_config=True,
    )
  assert info.value.code == 2
  assert capsys.readouterr().err == (
      "compare.py: error: unknown option --config.optimzer.name: the"
      " configuration has no field 'optimzer'; Did you mean \"optimizer\""
      " instead of \"optimzer\"?\n"
  )


def test_missing_data_file_is_one_line(tmp_path):
  workdir = tmp_path / "run"
  code, err = _main("--config.data.path=/no/such/corpus.txt",
                    workdir=workdir)
  assert code == 2
  assert err == [
      "main.py: error: `data.path`='/no/such/corpus.txt': no such file."
  ]
  assert not workdir.exists()
