"""No program is compiled after the second step. Packed train batches have one shape, and a step trains any number
of rows in calls of that shape (rl/step.py), so the rows of non-zero advantage, which change every step, change
nothing XLA sees. Counted from JAX's compile events (the trainer's counter, logged as `compile/programs`)."""
import json
import os

import jax
import numpy as np
import optax

from deliberate import metric_names as M, trainer
from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import loss as loss_lib, step as step_lib
from deliberate.rl.batch import Row
from configs import tiny
from tests.test_learning import learning_config

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64)


def _rows(n: int, seed: int) -> list[Row]:
  rng = np.random.default_rng(seed)
  return [Row(rng.integers(1, 64, int(rng.integers(3, 20))).tolist(), (r := rng.integers(1, 64, 6).tolist()),
              [-1.0] * len(r), sequence=i) for i in range(n)]


def test_a_packed_step_compiles_nothing_new_whatever_its_rows():
  """2, 4 and 11 rows of different lengths, the largest last: the first step compiles, the others reuse its
  programs (the targets-per-sequence bound is the packer's fixed budget, not the batch's count, so a step with more
  targets than any before compiles nothing). Padded (pack_length 0), the same batches compile a new gradient
  program for each new (rows, length) bucket."""
  tx = optax.sgd(0.1)
  programs = {}
  for pack in (40, 0):
    step = step_lib.make_pmap_step(tx, step_lib.StepConfig(model=CFG), jax.local_devices()[:1])
    state = step_lib.replicate({"params": transformer.init_params(CFG, jax.random.key(0)),
                                "opt_state": tx.init(transformer.init_params(CFG, jax.random.key(0)))}, 1)
    counts = []
    for n, seed in ((2, 2), (4, 0), (11, 1)):
      before = trainer._COMPILES["n"]
      batch = trainer.step_batch(_rows(n, seed), np.linspace(-1, 1, n).astype(np.float32), pad_id=0, multiple=1,
                                 loss_cfg=loss_lib.LossConfig(), skip_zero=False, pack_length=pack)
      state, _ = step(state, None, batch)
      counts.append(trainer._COMPILES["n"] - before)
    programs[pack] = counts
  assert programs[40][0] > 0 and programs[40][1:] == [0, 0], programs
  assert sum(programs[0][1:]) > 0, programs  # the padded layout would recompile: the packed one is what fixes it


def test_no_new_program_after_step_two(tmp_path):
  """The whole loop on a tiny config (the learning test's reward, which trains every step), packed."""
  c = learning_config(steps=4)
  c.rl.pack_length = 64                  # prompts of ~5 tokens + 8-token answers: several rows a sequence
  trainer.Trainer(c, str(tmp_path)).run()
  with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
    m = [json.loads(line) for line in f]
  programs = [x[M.COMPILES] for x in m]
  assert all(x.get(M.TRAIN_TOKENS, 0) > 0 for x in m), "every step should train"
  assert programs[0] > 0 and programs[2:] == [0, 0], programs


def _negotiation_programs(tmp_path, compile_steps: int, share_prefixes: bool = True, steps: int = 6
                          ) -> tuple[list[float], list[float]]:
  """`steps` steps of the paper's loop on the tiny model and real dilemmas (their prompts differ in length from step
  to step, and so do the rows left after agreements): programs compiled and sampler overflows, per step."""
  c = tiny.get_config()
  c.num_steps = c.optim.total_steps = steps
  c.checkpoint_every, c.tensorboard = 100, False
  c.negotiation.max_turns, c.negotiation.group_size = 4, 3
  c.sampling_compile_steps = compile_steps
  c.sampling_share_prefixes = share_prefixes
  trainer.Trainer(c, str(tmp_path)).run()
  with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
    m = [json.loads(line) for line in f]
  return [x[M.COMPILES] for x in m], [x[M.SAMPLER_OVERFLOW] for x in m]


def test_negotiation_compiles_nothing_after_step_two(tmp_path):
  """The task's largest calls are compiled before step 1 (Task.sampler_bounds) and the engine settles after step
  2: later calls run padded in a compiled program. Unsettled, the same run meets a new shape later on."""
  programs, overflow = _negotiation_programs(tmp_path / "settled", 2)
  assert programs[0] > 0 and programs[2:] == [0] * 4 and overflow == [0] * 6, (programs, overflow)
  programs, _ = _negotiation_programs(tmp_path / "unsettled", 0)
  assert sum(programs[2:]) > 0, programs
  # Whole-prompt bounds: every call runs in one of a few long programs, so each step costs more (3 steps suffice).
  programs, overflow = _negotiation_programs(tmp_path / "whole", 2, share_prefixes=False, steps=3)
  assert programs[2:] == [0] and overflow == [0] * 3, (programs, overflow)
