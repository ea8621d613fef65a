"""Run shell commands at once, each line of output prefixed with its index; exit non-zero if any fails, and stop
the others then (a multi-host JAX run cannot go on with a process missing).

  python launch/gpu/parallel.py "ssh gpu01 '...'" "ssh gpu02 '...'"
"""
import shlex
import subprocess
import sys
import threading


def main(commands: list[str]) -> int:
  procs = [subprocess.Popen(shlex.split(c), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for c in commands]
  lock = threading.Lock()

  def pump(i: int, p: subprocess.Popen) -> None:
    for line in p.stdout:
      with lock:
        sys.stdout.write(f"[{i}] {line}")
        sys.stdout.flush()

  threads = [threading.Thread(target=pump, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  rc = 0
  while any(p.poll() is None for p in procs):
    for p in procs:
      if p.poll() not in (None, 0) and not rc:
        rc = p.returncode
        for other in procs:
          if other.poll() is None:
            other.terminate()
    threading.Event().wait(0.2)
  for t in threads:
    t.join(timeout=5)
  return rc or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
