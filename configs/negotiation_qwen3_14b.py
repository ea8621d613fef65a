"""The paper's run: Qwen3-14B (thinking off), LoRA, G=8, 2 prompts a step, lr 5e-6, beta 0, N=7, 1,900 steps.

  python launch/train.py --config configs/negotiation_qwen3_14b.py --workdir /data/runs/neg14b \
      --config.model.name=/data/ckpt/Qwen3-14B --config.judge.base_url=https://api.openai.com/v1

The paper trained 4-bit QLoRA on one 96 GB GPU; here the frozen base is held in bf16 and the step is the sharded
(jit over a (data, fsdp) mesh) one, so the base and optimizer state can be split across chips.
"""
from deliberate.config import base_config


def get_config():
  c = base_config()
  c.model.name = "/path/to/Qwen3-14B"   # an HF directory with config.json and safetensors
  c.model.param_dtype = "bfloat16"
  c.model.compute_dtype = "bfloat16"
  c.judge.base_url = "https://api.openai.com/v1"
  c.judge.model = "gpt-4o-mini"          # the paper's training judge class
  c.judge.api_key_env = "OPENAI_API_KEY"
  c.judge.cache_path = "judge_cache.sqlite"
  c.negotiation.group_size = 8
  c.negotiation.max_turns = 7
  c.negotiation.turn_temperature = 0.7
  c.negotiation.completion_temperature = 0.1
  c.negotiation.overlap_judge = True     # a remote judge: sample the next turn while it answers
  c.data.prompts_per_step = 2
  c.num_steps = 1900
  c.optim.learning_rate = 5e-6
  c.optim.total_steps = 1900
  c.rl.beta = 0.0
  # Mesh, remat and chunking from `python bench/memory.py --config configs/negotiation_qwen3_14b.py --one-gpu` (AOT
  # from abstract shapes, XLA's per-device memory; compiled for CPU, which keeps float32 copies of the bf16 weights,
  # so these are upper bounds). fsdp over every chip (mesh_fsdp = 0): on a v5e-8, (data=1, fsdp=8) splits the bf16
  # base (3.5 GiB a chip), the adapters and their AdamW state 8 ways; the sampler uses those very shards (rows over
  # 'data', weights and the KV cache split by kv head over 'fsdp': 8 kv heads / 8) and peaks at 13.3 GiB for the
  # completion (2048-slot prompt, 16 rows); the train step needs remat (every layer recomputed in the backward pass:
  # the saved activations are one [rows, T, D] per layer) and the output layer in 256-token chunks (no [rows, T, V]
  # logits); with 2 rows a chip it peaked at 19.3 GiB, over a v5e's 16 GiB, so 2 micro-batches of 1 row a chip
  # (the same update): 15.0 GiB. On one H200 the same config is (1, 1) and peaks at 118.8 GiB (of 141).
  # Roofline of one step (same script, judge excluded): 18.3 s on a v5e-8, 3.2 s on an H200.
  c.rl.step = "sharded"
  c.rl.mesh_data = 1
  c.rl.mesh_fsdp = 0                     # every chip the data axis leaves: 8 on a v5e-8, 1 on one GPU
  c.rl.lora_rank = 16                    # not disclosed: ours
  c.rl.remat = True
  c.rl.token_chunk = 256
  c.rl.micro_batches = 2
  return c
