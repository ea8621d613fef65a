"""Verdicts from a local model's logits (the `model` backend): the argmax of log-probs checked against an independent
forward pass on a tiny random model, answers of one or several tokens, and end to end through the judge server."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate import policy
from deliberate.config import base_config
from deliberate.judge import judges
from deliberate.judge.config import default_judge_config
from deliberate.judge.logits import LocalJudgeModel
from deliberate.judge.runner import SyncJudge
from deliberate.judge.serve import make_model_backend, start_server
from deliberate.judge.verdicts import SCORE, VERDICT, WINNER
from deliberate.model import tokenizer as tok_lib
from deliberate.model import transformer

MSGS = [{"role": "system", "content": "[rubric: ca-score/v1]\nRate it."}, {"role": "user", "content": "A plan."}]


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
  c = base_config().model
  c.name = "tiny"
  params, cfg, tok = policy.load_model(c, str(tmp_path_factory.mktemp("tiny")))
  return LocalJudgeModel(params, cfg, tok)


def _reference(m, context, answer):
  """log p(answer | context) from one full forward pass, token by token."""
  ids = list(context) + list(answer)
  logits, _ = transformer.apply(m.params, jnp.asarray([ids]), jnp.arange(len(ids))[None], config=m.config)
  lp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
  return sum(float(lp[len(context) - 1 + k, t]) for k, t in enumerate(answer))


@pytest.mark.parametrize("final", [SCORE, VERDICT, WINNER], ids=["score", "verdict", "winner"])
def test_verdict_is_the_argmax_of_the_answers_sequence_logprobs(judge_model, final):
  m = judge_model
  [(text, lps)] = m.verdict([MSGS], 0, final.prefix, list(final.answers))
  context = tok_lib.render_ids(m.tokenizer, MSGS) + m._encode(final.prefix)
  ids = {a: m.answer_ids(final.prefix, a) for a in final.answers}
  want = {a: _reference(m, context, ids[a]) for a in final.answers}
  assert lps == pytest.approx(want, abs=1e-4)
  best = max(want, key=want.get)
  assert text == f"{final.prefix} {best}" and max(lps, key=lps.get) == best
  # The tiny tokenizer splits these answers into several tokens: they are scored as sequences, not first tokens.
  assert any(len(v) > 1 for v in ids.values())


def test_single_token_answers_share_one_row(judge_model):
  m = judge_model
  context = tok_lib.render_ids(m.tokenizer, MSGS)
  singles = [[7], [11], [13]]
  shared = [[20, 7], [20, 11], [20, 13]]  # one shared leading id, then one distinct id each
  got = m.sequence_logprobs([context, context], [singles, shared])
  assert got[0] == pytest.approx([_reference(m, context, a) for a in singles], abs=1e-4)
  assert got[1] == pytest.approx([_reference(m, context, a) for a in shared], abs=1e-4)


def test_reasoning_budget_then_prefix(judge_model):
  m = judge_model
  [(text, lps)] = m.verdict([MSGS], 6, "Score:", list(SCORE.answers))
  reasoning, last = text.rsplit("\n", 1) if "\n" in text else ("", text)
  assert last.startswith("Score: ") and last.split()[-1] == max(lps, key=lps.get)
  assert m.last_reasoning_lengths[0] <= 6  # bounded reasoning, scored on the sampled ids themselves


def test_logit_judge_never_fails_to_parse_where_text_does(judge_model):
  """The same random model: its text rambles past max_tokens ('length'); its logits always give a verdict."""
  backend = make_model_backend(judge_model, max_wait_s=0.02)
  c = default_judge_config()
  c.api_key_env, c.max_tokens, c.length_retry_max_tokens, c.max_parse_retries = "", 8, 0, 0
  c.verdict_reasoning_tokens = 4
  kwargs = [dict(dilemma="Share the well?", persona_a=None, persona_b=None, completion=f"Plan {i}: share it.")
            for i in range(3)]
  with start_server(backend) as server:
    c.base_url = server.url
    with SyncJudge(c) as judge:
      text = judge.map(judges.judge_ca, kwargs)
    c.verdict_mode = "logits"
    with SyncJudge(c) as judge:
      logit = judge.map(judges.judge_ca, kwargs)
      metrics = judge.metrics()
  assert all(not r.ok and r.reason in ("length", "unparseable") for r in text)
  for r in logit:
    assert r.ok and r.value == int(max(r.probs, key=r.probs.get)) and sum(r.probs.values()) == pytest.approx(1)
    assert r.mean == pytest.approx(sum(int(a) * p for a, p in r.probs.items()))
    assert r.text.splitlines()[-1] == f"Score: {r.value}"
  assert metrics["judge/verdicts_from_probs"] == 3 and metrics["judge/failures"] == 0


def test_a_lora_policy_judging_itself_scores_with_its_adapters(judge_model):
  """Logit verdicts read the engine's current params and adapters, so a trained LoRA policy's judge moves with it."""
  from deliberate.rl import lora
  from deliberate.sampling.engine import SamplingEngine
  m = judge_model
  cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("wq", "w_up"))
  ab = lora.init_lora(m.params, cfg, jax.random.key(1))
  ab = {k: {"a": v["a"], "b": jnp.full_like(v["b"], 0.05)} for k, v in ab.items()}
  adapters = lora.adapters(ab, cfg)
  judged = LocalJudgeModel(m.params, m.config, m.tokenizer, SamplingEngine(m.params, m.config, lora=adapters))
  context = tok_lib.render_ids(m.tokenizer, MSGS)
  ids = list(context) + [7]
  logits, _ = transformer.apply(m.params, jnp.asarray([ids]), jnp.arange(len(ids))[None], config=m.config,
                                lora=adapters)
  want = float(jax.nn.log_softmax(logits[0, len(context) - 1])[7])
  [[got]] = judged.sequence_logprobs([context], [[[7]]])
  [[base]] = m.sequence_logprobs([context], [[[7]]])
  assert got == pytest.approx(want, abs=1e-4) and abs(got - base) > 1e-3
