"""Single-agent answers to open questions: the baseline's prompt, one batched call, CA scores from a scripted judge
behind the real local server."""
import re

import pytest

from deliberate.eval import answers
from deliberate.judge import rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.model import tokenizer as tok_lib
from deliberate.sampling.engine import SamplingEngine
from deliberate.sampling.sampler import SamplingParams
from deliberate.tasks import single_agent

QUESTIONS = [{"id": "open-001", "question": "What do we owe neighbours? [score:4]"},
             {"id": "open-002", "question": "How should a city share its parks? [score:junk]"}]


def scripted_judge(messages_lists, max_tokens, temperature):
  out = []
  for messages in messages_lists:
    assert rubrics.CA_VERSION in messages[0]["content"] and "(no persona given)" in messages[-1]["content"]
    tag = re.search(r"\[score:(\w+)\]", messages[-1]["content"]).group(1)
    out.append(f"Score: {tag}" if tag != "junk" else "I would rather not say.")
  return out


def test_answers_prompt_sampling_and_scores(tiny_policy, tiny_tokenizer):
  params, config = tiny_policy
  engine = SamplingEngine(params, config)
  sp = SamplingParams(temperature=1.0, max_new_tokens=5)
  recs = answers.answer_questions(engine, tiny_tokenizer, QUESTIONS, sp, seed=0, samples=2, policy="p",
                                  decoding="sampled")
  assert [(r["id"], r["sample"]) for r in recs] == [("open-001", 0), ("open-001", 1), ("open-002", 0),
                                                    ("open-002", 1)]
  assert all(0 < r["tokens"] <= 5 and r["policy"] == "p" for r in recs)
  # The prompt is the baseline's: its system message, then the question.
  rendered = tiny_tokenizer.decode(tok_lib.render_ids(tiny_tokenizer, answers.answer_messages("Q?")))
  assert single_agent.SINGLE_AGENT_SYSTEM[:40] in rendered.replace("\u2581", " ")
  cfg = default_judge_config()
  cfg.embedded, cfg.embedded_backend, cfg.max_parse_retries, cfg.api_key_env = True, "model", 0, ""
  with SyncJudge(cfg, generate_fn=scripted_judge) as judge:
    answers.score_answers(judge, recs)
  assert [r["score"] for r in recs] == [4, 4, None, None]
  assert [r["failure"] for r in recs] == [None, None, "unparseable", "unparseable"]
  s = answers.answers_summary(recs)
  assert (s["answers"], s["ca"]["n_scored"], s["ca"]["n_failed"], s["ca"]["mean"]) == (4, 2, 2, 4.0)


def test_bad_question(tiny_policy, tiny_tokenizer):
  params, config = tiny_policy
  with pytest.raises(ValueError, match="open question 'q9': needs an 'id' and a non-empty 'question'"):
    answers.answer_questions(SamplingEngine(params, config), tiny_tokenizer, [{"id": "q9", "question": " "}],
                             SamplingParams(), seed=0)
