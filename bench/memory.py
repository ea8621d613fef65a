"""Memory and a roofline of one GRPO step, proved without the hardware: AOT compiles from abstract shapes only.

  python bench/memory.py --config configs/negotiation_qwen3_14b.py [--devices 8] [--mesh-data 1 --mesh-fsdp 8]
                         [--before]

No weight is loaded or allocated: params, adapters, optimizer state, batches and caches are `jax.ShapeDtypeStruct`s
with shardings on a mesh of simulated CPU devices, and each program is `.lower().compile()`d. Printed per program
(the sampler's whole turn: prefill + decode loop; the train step), per device: XLA's memory analysis (arguments,
outputs, temporaries, aliased) next to the memory of TPU v5e / v4 / v5p and H100 / H200 chips; then XLA's cost
analysis (FLOPs and bytes) of the prefill, of one decode step and of the train step, turned into a roofline
estimate of one paper step: `max_turns` turns plus the completions for P x G dialogues, and the train step.
The judge's time is excluded. Communication is not modelled (XLA CPU schedules no collectives' overlap), so on
several chips the estimate is a lower bound. `--before` compiles what the code did before LoRA got its own path:
the loss merges the adapters into a float32 copy of every adapted matrix, and the sampler gets that float32 merge
replicated on every device in the split layout.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deliberate.memory import GIB, TARGETS, analyze  # noqa: E402


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("run_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def table(r: dict[str, Any], title: str) -> str:
  gb = lambda x: f"{x / GIB:7.2f}"
  lines = [f"## {title}: mesh {r['mesh']}, {r['model_params'] / 1e9:.2f}B params, shapes {r['shapes']}",
           f"{'program':14s} {'args':>7s} {'out':>7s} {'temp':>7s} {'alias':>7s} {'peak':>7s} GiB/device  "
           + "  ".join(f"{k}({v[0] // GIB})" for k, v in TARGETS.items())]
  for p in ("sample_turn", "sample_final", "train_step"):
    s = r[p]
    fits = "  ".join(f"{'fits' if s['peak'] <= v[0] else 'NO':>{len(k) + 2 + len(str(v[0] // GIB))}s}"
                     for k, v in TARGETS.items())
    lines.append(f"{p:14s} {gb(s['args'])} {gb(s['out'])} {gb(s['temp'])} {gb(s['alias'])} {gb(s['peak'])}"
                 f"             {fits}")
  lines.append("(compiled for the CPU backend, which has no bf16 matmul and keeps float32 copies of bf16 weights in "
               "temp: an upper bound for a TPU or GPU)")
  lines.append("cost per program, whole mesh (XLA cost analysis, layers unrolled, before backend passes): " + ", ".join(
      f"{p} {r[p]['flops'] / 1e12:.2f} TFLOP {r[p]['bytes'] / 1e9:.2f} GB"
      for p in ("prefill_turn", "decode_turn", "prefill_final", "decode_final")) +
      f"; weights {r['weight_bytes'] / 1e9:.2f} GB")
  lines.append("roofline of one step (judge excluded; no communication modelled): " + ", ".join(
      f"{k} {v['step_s']:.1f}s (sample {v['sample_s']:.1f} + train {v['train_s']:.1f}; decode step "
      f"{v['decode_ms']:.1f} ms)" for k, v in r["roofline"].items()))
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  ap.add_argument("--mesh-data", type=int, default=0, help="0: the config's rl.mesh_data (0 = devices / fsdp)")
  ap.add_argument("--mesh-fsdp", type=int, default=0, help="0: the config's rl.mesh_fsdp")
  ap.add_argument("--before", action="store_true", help="the code before: merged float32 LoRA, replicated sampler")
  ap.add_argument("--opening-tokens", type=int, default=0, help="0: estimated from the packaged data")
  ap.add_argument("--one-gpu", action="store_true", help="also analyse a 1-device mesh (H100/H200)")
  a = ap.parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={a.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  c = load_config(a.config)
  from deliberate.mesh import mesh_shape
  data, fsdp = mesh_shape(a.mesh_data or c.rl.mesh_data, a.mesh_fsdp or c.rl.mesh_fsdp, a.devices)
  meshes = [(data, fsdp)] + ([(1, 1)] if a.one_gpu else [])
  for d, f in meshes:
    r = analyze(c, d, f, before=a.before, opening=a.opening_tokens or None)
    print(table(r, ("before" if a.before else "after") + f": {a.config}"), flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
