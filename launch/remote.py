"""What the TPU and GPU launchers share: a list of commands run in order (or printed with --dry_run), a delete/cleanup
step on failure, and the judge's API key kept off every command line.

The key never travels as an argument: it is copied into a 0600 file on each worker, and the worker's shell reads it
into the environment variable the run config names (`export OPENAI_API_KEY="$(cat ~/.deliberate/judge_key)"`); the
`export` is a shell builtin, so the key appears in no process's argv (`ps`) and in no gcloud/ssh log line.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REMOTE_KEY_DIR = "~/.deliberate"
REMOTE_KEY_FILE = "~/.deliberate/judge_key"


@dataclasses.dataclass
class Step:
  """One local command. `poll` makes it repeat (every poll_s) until its output contains that text."""
  what: str
  argv: list[str]
  poll: str = ""
  poll_s: float = 30.0
  env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra variables for this command (never a key)

  def shown(self) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
    return (prefix + " " if prefix else "") + shlex.join(self.argv)


class KeyFile:
  """The local file holding the judge's key: the one given, or a 0600 temporary file written from the local
  environment at run time (never during a dry run) and removed afterwards."""

  def __init__(self, api_key_env: str, api_key_file: str = ""):
    self.api_key_env, self.given = api_key_env, api_key_file
    self.path = api_key_file or (f"<temporary 0600 file holding ${api_key_env}>" if api_key_env else "")
    self._temp = ""

  @property
  def needed(self) -> bool:
    return bool(self.api_key_env)

  def secret(self) -> str:
    """The key's value (only to check that no command carries it)."""
    if self.given:
      if not os.path.isfile(os.path.expanduser(self.given)):
        raise FileNotFoundError(f"--api_key_file {self.given}: no such file")
      with open(os.path.expanduser(self.given), encoding="utf-8") as f:
        return f.read().strip()
    return os.environ.get(self.api_key_env, "")

  def materialise(self) -> str:
    if self.given:
      if not os.path.isfile(os.path.expanduser(self.given)):
        raise FileNotFoundError(f"--api_key_file {self.given}: no such file")
      return os.path.expanduser(self.given)
    value = os.environ.get(self.api_key_env, "")
    if not value:
      raise ValueError(f"the judge's key: ${self.api_key_env} is not set here and no --api_key_file was given "
                       "(use --api_key_env='' for a run whose judge needs no key)")
    fd, self._temp = tempfile.mkstemp(prefix="deliberate-judge-key-")
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(value)
    self.path = self._temp
    return self._temp

  def cleanup(self) -> None:
    if self._temp and os.path.exists(self._temp):
      os.remove(self._temp)


def export_key(api_key_env: str) -> str:
  """The shell text that puts the key into the run's environment on a worker, from the copied file."""
  return f'export {api_key_env}="$(cat {REMOTE_KEY_FILE})"' if api_key_env else ""


def check_no_secret(steps: Sequence[Step], secret: str, extra_text: str = "") -> None:
  """Refuses to run (or print) anything that would put the key on a command line."""
  if secret and len(secret) >= 4 and (any(secret in s.shown() for s in steps) or secret in extra_text):
    raise RuntimeError("refusing: the judge's API key would appear on a command line")


def run_steps(steps: Sequence[Step], dry_run: bool, key: KeyFile | None = None,
              on_failure: Sequence[Step] = (), out=sys.stdout,
              runner: Callable[[Step], int] | None = None) -> int:
  """Runs the steps in order; at the first failure runs `on_failure` (e.g. delete the slice) and returns its exit
  code. With dry_run, prints them all (then the on-failure steps, marked) and runs nothing."""
  secret = key.secret() if key is not None and key.needed else ""
  check_no_secret(list(steps) + list(on_failure), secret)
  if dry_run:
    for s in steps:
      print(f"# {s.what}" + (f" (repeated every {s.poll_s:.0f}s until the output shows {s.poll})" if s.poll else ""),
            file=out)
      print(s.shown(), file=out)
    for s in on_failure:
      print(f"# on failure: {s.what}", file=out)
      print(s.shown(), file=out)
    return 0
  runner = runner or _run
  try:
    if key is not None and key.needed:
      path = key.materialise()
      steps = [dataclasses.replace(s, argv=[path if a == key_placeholder(key) else a for a in s.argv]) for s in steps]
    for s in steps:
      print(f"\n>>> {s.what}\n{s.shown()}", file=sys.stderr, flush=True)
      rc = runner(s)
      if rc:
        print(f">>> failed ({rc}): {s.what}", file=sys.stderr, flush=True)
        for f in on_failure:
          print(f"\n>>> on failure: {f.what}\n{f.shown()}", file=sys.stderr, flush=True)
          runner(f)
        return rc
    return 0
  except KeyboardInterrupt:
    for f in on_failure:
      print(f"\n>>> interrupted: {f.what}\n{f.shown()}", file=sys.stderr, flush=True)
      runner(f)
    return 130
  finally:
    if key is not None:
      key.cleanup()


def main_guard(fn: Callable[[], int]) -> None:
  """Exits with a one-line error (no traceback) for the mistakes a person fixes by changing an argument."""
  try:
    sys.exit(fn())
  except (FileNotFoundError, ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def key_placeholder(key: KeyFile) -> str:
  return key.given or f"<temporary 0600 file holding ${key.api_key_env}>"


def _run(step: Step) -> int:
  env = {**os.environ, **step.env}
  if not step.poll:
    return subprocess.run(step.argv, env=env, check=False).returncode
  while True:
    r = subprocess.run(step.argv, env=env, check=False, capture_output=True, text=True)
    if r.returncode:
      sys.stderr.write(r.stderr)
      return r.returncode
    if step.poll in r.stdout:
      return 0
    print(f"    waiting: {r.stdout.strip() or '(no state yet)'}", file=sys.stderr, flush=True)
    time.sleep(step.poll_s)


def train_command(config: str, workdir: str, overrides: Sequence[str], python: str = "python3",
                  extra_flags: Sequence[str] = ()) -> str:
  """launch/train.py as the shell text a worker runs."""
  return shlex.join([python, "launch/train.py", f"--config={config}", f"--workdir={workdir}", *extra_flags,
                     *overrides])


def check_overrides(overrides: Sequence[str]) -> None:
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise ValueError(f"after '--' only --config.x=y overrides are passed to launch/train.py, got {bad}")


def remote_shell(*parts: str) -> str:
  """Shell text for a worker: the parts joined with && after `set -eo pipefail`."""
  return " && ".join(["set -eo pipefail", *[p for p in parts if p]])
