"""The learning test's hand checks: tests/test_learning.py's run with one fault patched in, so that anyone can see
the test fail for the right reasons (issue 16).

  python bench/learning_faults.py none sign mask+1 mask-1 lr0

none: as shipped. sign: advantages negated. mask+1 / mask-1: the loss mask rolled one position right / left (+1 is
refused by the batch checks: it marks position 0 or padding). lr0: a constant learning rate of 0 (the config
validation refuses lr 0, so the schedule is patched).
"""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]
import conftest  # noqa: E402,F401  (8 host devices, as in the test)
import numpy as np  # noqa: E402
import optax  # noqa: E402

from deliberate.rl import advantages as adv_lib, batch as batch_lib, optim  # noqa: E402
import test_learning as tl  # noqa: E402


def patch(fault: str) -> None:
  if fault == "sign":
    orig = adv_lib.group_advantages
    adv_lib.group_advantages = lambda *a, **k: (lambda r: (-r[0], r[1], r[2]))(orig(*a, **k))
  elif fault.startswith("mask"):
    shift, orig_c = int(fault[4:]), batch_lib.collate

    def collate(*a, **k):
      b = orig_c(*a, **k)
      b["loss_mask_BxT"] = np.roll(b["loss_mask_BxT"], shift, axis=1)
      return b
    batch_lib.collate = collate
  elif fault == "lr0":
    optim.make_schedule = lambda cfg: optax.constant_schedule(0.0)
  elif fault != "none":
    raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
  if len(sys.argv) == 2:
    patch(sys.argv[1])
    try:
      r = tl.rewards(tl.learning_config(), tempfile.mkdtemp())
      gain = r[-3:].mean() - r[:3].mean()
      print(f"{sys.argv[1]}: rewards {np.round(r, 3).tolist()} gain {gain:.3f} -> the test "
            f"{'PASSES' if gain > tl.MARGIN else 'FAILS'} (margin {tl.MARGIN})")
    except ValueError as e:
      print(f"{sys.argv[1]}: refused before the update ({e}) -> the test FAILS")
  else:  # one process per fault: patches never leak into the next run
    import subprocess
    for f in sys.argv[1:] or ["none", "sign", "mask+1", "mask-1", "lr0"]:
      subprocess.run([sys.executable, __file__, f], check=False)
