"""Sweeps: expansion of products and zips, fields checked against the real config before anything runs, the sweep
record in every workdir, the summary table, and one real run of launch/train.py through launch/sweep.py."""
import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from deliberate import sweeps

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SWEEP = os.path.join(_ROOT, "launch", "sweep.py")


def _sweep_file(tmp_path, body: str, name: str = "s.py") -> str:
  path = tmp_path / name
  path.write_text("import ml_collections\n\ndef get_config():\n  s = ml_collections.ConfigDict()\n"
                  + textwrap.indent(textwrap.dedent(body), "  ") + "\n  return s\n")
  return str(path)


def _cli(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, _SWEEP, *args], cwd=_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


_GRID = """
s.name = "grid"
s.config = "configs/tiny.py"
s.fixed = {"num_steps": 2, "tensorboard": False}
s.product = {"optim": {"learning_rate": [1e-4, 1e-3]}, "rl": {"norm_mode": ["token_sum", "constant"]}}
s.zip = {"seed": [0, 1], "data": {"prompts_per_step": [2, 4]}}
"""


def test_expansion_products_and_zips(tmp_path):
  sweep = sweeps.load(_sweep_file(tmp_path, _GRID), str(tmp_path / "out"))
  assert sweep.name == "grid" and sweep.config_file == "configs/tiny.py"
  assert sweep.directory == str(tmp_path / "out" / "grid")
  assert len(sweep.runs) == 8
  got = [(r.varying["optim.learning_rate"], r.varying["rl.norm_mode"], r.varying["seed"],
          r.varying["data.prompts_per_step"]) for r in sweep.runs]
  want = [(lr, nm, seed, p) for lr in (1e-4, 1e-3) for nm in ("token_sum", "constant") for seed, p in ((0, 2), (1, 4))]
  assert got == want
  assert all(r.overrides["num_steps"] == 2 and r.overrides["tensorboard"] is False for r in sweep.runs)
  assert len({r.workdir for r in sweep.runs}) == 8 and all(r.workdir.startswith(sweep.directory) for r in sweep.runs)
  assert [r.index for r in sweep.runs] == list(range(8))
  cmd = sweep.command(sweep.runs[5])
  assert cmd[:4] == ["python", "launch/train.py", "--config=configs/tiny.py", f"--workdir={sweep.runs[5].workdir}"]
  assert set(cmd[4:]) == {"--config.num_steps=2", "--config.tensorboard=False", "--config.optim.learning_rate=0.001",
                          "--config.rl.norm_mode=token_sum", "--config.seed=1", "--config.data.prompts_per_step=4"}
  # The overrides parse, through ml-collections' own flag parser, into the intended run config.
  config = sweeps.parse_overrides(sweep.config_file, sweep.runs[5].flags())
  assert (config.optim.learning_rate, config.rl.norm_mode, config.seed, config.data.prompts_per_step,
          config.num_steps, config.tensorboard) == (1e-3, "token_sum", 1, 4, 2, False)


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path):
  out = tmp_path / "out"
  r = _cli("--sweep", _sweep_file(tmp_path, _GRID), "--sweep_dir", str(out), "--dry_run")
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if l.startswith("python ")]
  assert len(lines) == 8
  assert shlex.split(lines[0])[1:3] == ["launch/train.py", "--config=configs/tiny.py"]
  assert not out.exists()


@pytest.mark.parametrize("body,message", [
    ('s.product = {"optim": {"learing_rate": [1e-4, 1e-3]}}',
     "field 'optim.learing_rate' does not exist in the config (did you mean 'optim.learning_rate'?)"),
    ('s.fixed = {"rl": {"betta": 0.1}}', "field 'rl.betta' does not exist in the config"),
    ('s.zip = {"sed": [0, 1]}', "field 'sed' does not exist in the config (did you mean 'seed'?)"),
    ('s.product = {"num_steps": ["ten"]}', "num_steps"),
    ('s.zip = {"seed": [0, 1], "rl": {"beta": [0.0]}}', "the lists of zip differ in length: rl.beta has 1, seed has 2"),
    ('s.prodcut = {"seed": [0, 1]}', "unknown key(s) prodcut"),
    ('s.product = {"seed": 3}', "product.seed must be a non-empty list of values"),
])
def test_bad_sweep_fails_before_anything_runs(tmp_path, body, message):
  path = _sweep_file(tmp_path, f's.name = "bad"\ns.config = "configs/tiny.py"\n{body}')
  with pytest.raises(ValueError) as info:
    sweeps.load(path, str(tmp_path / "out"))
  assert message in str(info.value) and path in str(info.value), str(info.value)
  # The command line says the same, exits non-zero and starts no run (no sweep directory, no workdir).
  r = _cli("--sweep", path, "--sweep_dir", str(tmp_path / "out"))
  assert r.returncode == 2 and message in r.stderr, r.stderr
  assert not (tmp_path / "out").exists()


def _metrics(workdir: str, rows):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def test_summary_table_across_runs(tmp_path):
  sweep = sweeps.load(_sweep_file(tmp_path, """
      s.name = "sum"
      s.config = "configs/tiny.py"
      s.product = {"optim": {"learning_rate": [1e-4, 1e-3, 1e-2]}}"""), str(tmp_path))
  for r in sweep.runs:
    sweeps.write_record(sweep, r, sweep.command(r))
  lr = lambda i: sweep.runs[i].varying["optim.learning_rate"]
  _metrics(sweep.runs[0].workdir, [{"step": s, "reward/group_mean": s * 1.0, "loss": None} for s in range(1, 13)])
  _metrics(sweep.runs[1].workdir, [{"step": 1, "reward/group_mean": 5.0, "loss": 0.5},
                                   {"step": 2, "reward/group_mean": 7.0, "loss": 0.25}])
  record = json.load(open(os.path.join(sweep.runs[1].workdir, "sweep.json")))
  assert record["sweep"] == "sum" and record["index"] == 1 and record["num_runs"] == 3
  assert record["varying"] == {"optim.learning_rate": lr(1)} and record["sweep_file"] == sweep.path
  assert "--config.optim.learning_rate=0.001" in record["command"]
  r = _cli("--summary", sweep.directory, "--metrics", "reward/group_mean,loss", "--last", "10")
  assert r.returncode == 0, r.stderr
  table = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.strip().splitlines()]
  assert table[0] == ["run", "optim.learning_rate", "steps", "reward/group_mean (last 10)", "loss (last 10)"]
  assert table[2] == ["0", "0.0001", "12", "7.5", "-"]          # mean of steps 3..12; loss never logged
  assert table[3] == ["1", "0.001", "2", "6", "0.375"]
  assert table[4] == ["2", "0.01", "not started", "-", "-"]
  # The same table from the sweep file.
  os.remove(os.path.join(sweep.runs[2].workdir, "sweep.json"))  # a run never started: known from the sweep file
  r2 = _cli("--sweep", sweep.path, "--sweep_dir", str(tmp_path), "--summary=", "--metrics", "reward/group_mean,loss")
  assert r2.returncode == 0 and r2.stdout == r.stdout, r2.stderr
  with pytest.raises(ValueError, match="no run directories with a sweep.json"):
    sweeps.summary_rows(str(tmp_path), ["loss"])


def test_a_real_sweep_run(tmp_path):
  """launch/sweep.py runs launch/train.py with the overrides; the workdir records the sweep; the summary reads it."""
  path = _sweep_file(tmp_path, """
      s.name = "real"
      s.config = "configs/tiny.py"
      s.fixed = {"num_steps": 1, "tensorboard": False}
      s.product = {"optim": {"learning_rate": [1e-3, 1e-2]}}""")
  r = _cli("--sweep", path, "--sweep_dir", str(tmp_path / "out"), "--only", "1", timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  workdir = sweeps.load(path, str(tmp_path / "out")).runs[1].workdir
  record = json.load(open(os.path.join(workdir, "sweep.json")))
  assert record["sweep"] == "real" and record["index"] == 1 and record["overrides"]["optim.learning_rate"] == 1e-2
  config = json.load(open(os.path.join(workdir, "config.json")))  # written by the trainer: the overrides arrived
  assert config["optim"]["learning_rate"] == 1e-2 and config["num_steps"] == 1
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [row["step"] for row in rows] == [1]
  assert not os.path.exists(sweeps.load(path, str(tmp_path / "out")).runs[0].workdir)  # --only 1
  last = r.stdout.strip().splitlines()
  assert last[-1].startswith("| 1 ") and "| 1 " in last[-1] and last[-2].startswith("| 0 ") and "not started" not in \
      last[-1] and "not started" in last[-2]


def test_example_sweep_file_expands():
  sweep = sweeps.load(os.path.join(_ROOT, "launch", "sweeps", "tiny_lr.py"), "/tmp/unused")
  assert len(sweep.runs) == 8 and sweep.config_file == "configs/tiny.py"
