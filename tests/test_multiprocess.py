"""The sharded LM example on 2 processes x 2 CPU devices, as on 1 x 4.

Each run is a fresh ``examples/main.py`` process with its own environment
(2 or 4 fake CPU devices, gloo collectives), not the test process's 8
devices; two processes find each other through ``--coordinator_address``
on a free localhost port. The training runs take about 50 CPU seconds
(27 s on 2 idle cores); they are in the default run, which CI runs, so
that the multi-process path stays equal to the single-process one. A
second test checks that the command line's cluster options reach
``jax.distributed.initialize``.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# A hang guard (a process that lost its peer waits for it), not a speed
# limit: the whole test takes about 30 s on 2 idle cores.
_TIMEOUT_S = 600

_TINY = (
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.progress_bar=False",
    "--config.plot=False",
    "--config.batch_size=8",
    "--config.data.seq_len=16",
    "--config.eval.num_sequences=8",
    "--config.eval.batch_size=8",
    "--config.model.d_model=32",
    "--config.model.num_layers=2",
    "--config.model.num_heads=2",
)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  """The environment of one example process: ``devices`` CPU devices."""
  env = {
      k: v for k, v in os.environ.items()
      if not k.startswith(("PYTEST_", "XLA_", "JAX_", "TPU_", "SLURM_"))
  }
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  env["OPENBLAS_NUM_THREADS"] = "1"
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
  )
  return env


def _start(workdir, log, devices, cluster=()):
  command = [
      sys.executable, str(REPO / "examples" / "main.py"),
      "--config=" + str(REPO / "configs" / "lm_sharded.py"),
      f"--workdir={workdir}", *_TINY, *cluster,
  ]
  with open(log, "w") as out:
    return subprocess.Popen(
        command, cwd=REPO, env=_env(devices), stdout=out,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def _two_processes(workdir, tmp_path, name):
  address = f"127.0.0.1:{_free_port()}"
  return [
      _start(workdir, tmp_path / f"{name}_{i}.log", 2, (
          f"--coordinator_address={address}", "--num_processes=2",
          f"--process_id={i}",
      ))
      for i in range(2)
  ]


def _wait(procs, tmp_path):
  try:
    for p in procs:
      p.wait(timeout=_TIMEOUT_S)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = "\n".join(
      f"--- {log.name}\n{log.read_text()[-3000:]}"
      for log in sorted(tmp_path.glob("*.log"))
  )
  assert all(p.returncode == 0 for p in procs), logs


def _results(workdir):
  summary = json.loads((workdir / "summary.json").read_text())
  records = [json.loads(line)
             for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return summary, records


def test_two_processes_equal_one_and_resume(tmp_path):
  two, one, resumed = (tmp_path / n for n in ("two", "one", "resumed"))
  procs = _two_processes(two, tmp_path, "two") + [
      _start(one, tmp_path / "one.log", 4)
  ]
  _wait(procs, tmp_path)
  # One job of 4 devices, not two of 2: the processes found each other.
  log = (tmp_path / "two_0.log").read_text()
  assert "devices: 4 x cpu (2 processes)" in log
  got, got_records = _results(two)
  want, want_records = _results(one)
  assert got["final_step"] == 4 and got["start_step"] == 0
  # Process 0 alone writes the metrics: one record per step and split.
  assert [(r["split"], r["step"]) for r in got_records] == [
      ("train", 2), ("train", 4), ("eval", 4)
  ]
  for a, b in zip(got_records, want_records, strict=True):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(
      got["final_eval"]["loss"], want["final_eval"]["loss"], rtol=0, atol=1e-6
  )

  # Resume the two processes from their checkpoint at step 2.
  shutil.copytree(two, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  _wait(_two_processes(resumed, tmp_path, "resumed"), tmp_path)
  again, again_records = _results(resumed)
  assert again["start_step"] == 2 and again["final_step"] == 4
  assert [(r["split"], r["step"]) for r in again_records] == [
      ("train", 2), ("train", 4), ("eval", 4)
  ]
  np.testing.assert_allclose(
      again["final_eval"]["loss"], got["final_eval"]["loss"], rtol=0,
      atol=1e-6,
  )
  np.testing.assert_allclose(
      again_records[1]["loss"], got_records[1]["loss"], rtol=0, atol=1e-6
  )


# examples/main.py's main() with jax.distributed.initialize and the training
# replaced by recorders: which arguments reach initialize, per command line.
_PROBE = """
import json, sys
import jax
from examples import main, train
calls = []
jax.distributed.initialize = lambda **kwargs: calls.append(kwargs)
train.train_and_evaluate = lambda config, workdir: {}
train.describe_summary = lambda summary, workdir: ""
out = []
for args in json.loads(sys.argv[1]):
  calls.clear()
  main.FLAGS.unparse_flags()
  main.FLAGS(["main.py", "--config=configs/lm_sharded.py",
              "--workdir=unused", *args])
  main.main(["main.py"])
  out.append(list(calls))
print(json.dumps(out))
"""


def test_cluster_options_reach_initialize():
  cases = [
      ["--coordinator_address=10.0.0.1:1234", "--num_processes=2",
       "--process_id=1"],
      ["--process_id=0"],
      ["--distributed"],
      [],
  ]
  proc = subprocess.run(
      [sys.executable, "-c", _PROBE, json.dumps(cases)], cwd=REPO,
      env=_env(1), capture_output=True, text=True, timeout=_TIMEOUT_S,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  calls = json.loads(proc.stdout.strip().splitlines()[-1])
  assert calls == [
      [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
        "process_id": 1}],
      [{"process_id": 0}],
      [{}],
      [],
  ]
