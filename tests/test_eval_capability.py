"""General-capability scorers on hand-checked responses (each with cases that must score 0), the loaders on the
publishers' formats and on malformed files, and the runner through the real sampling engine on a tiny model."""
import json
import os

import numpy as np
import pytest

from deliberate.eval.capability import aime, files, gpqa, ifeval, runner
from deliberate.model import tokenizer as tok_lib
from deliberate.sampling.engine import SamplingEngine

C = ifeval.check


# ---------------------------------------------------------------- IFEval


@pytest.mark.parametrize("iid,kwargs,good,bad", [
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four",
     "one two three four five"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "it's a fine day", "so fine"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "One. Two!", "Only 3.5 ok."),
    ("keywords:existence", {"keywords": ["trust", "Listen"]}, "We TRUST you; listen.", "we trust you"),
    ("keywords:forbidden_words", {"forbidden_words": ["urgent"]}, "Non-urgently? no: not urgently", "It is URGENT."),
    ("keywords:frequency", {"keyword": "team", "frequency": 2, "relation": "at least"}, "Team, team!", "one team"),
    ("keywords:frequency", {"keyword": "no", "frequency": 2, "relation": "less than"}, "no way", "no, no"),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 3, "let_relation": "at least"}, "EeE", "ee"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro\n* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and **b**", "*a* and * *"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nx\nSECTION 2\ny", "SECTION 1\nx\nsection two"),
    ("detectable_format:title", {}, "<<A Plan>>\ntext", "<< >> and <A Plan>"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "My answer is perhaps."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\nP.S. see you", "Bye. PS see you"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "one\n***\ntwo", "one\n***\n***\ntwo"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "finally"},
     "First.\n\nFinally, done.", "First.\n\nAt last, finally."),
    ("combination:two_responses", {}, "Read more ****** Give more", "Same ****** Same"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name one way."}, "name one way. Plan ahead.", "One way: plan."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Any other questions? Done."),
    ("startend:quotation", {}, '"All of it."', 'All of "it"'),
    ("change_case:english_lowercase", {}, "all lower, 42.", "Not all lower"),
    ("change_case:english_capital", {}, "GO TEAM GO!", "GO team GO"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "ONE word",
     "ONE TWO words"),
    ("punctuation:no_comma", {}, "No commas here.", "One, here."),
    ("language:response_language", {"language": "de"}, "Ich glaube, dass die Familie den Kalender teilen sollte.",
     "I think the family should share the calendar."),
])
def test_ifeval_checkers(iid, kwargs, good, bad):
  assert C(iid, good, kwargs), (iid, good)
  assert not C(iid, bad, kwargs), (iid, bad)


def test_every_ifeval_instruction_has_a_case():
  checked = {p[0] for p in test_ifeval_checkers.pytestmark[0].args[1]}
  assert checked == set(ifeval.CHECKERS)


def test_ifeval_empty_response_follows_nothing_and_language_scripts():
  assert not C("punctuation:no_comma", "   ", {})
  assert ifeval.detect_language("Привет, как дела?") == "ru" and ifeval.detect_language("東京に行きます") == "ja"


def test_ifeval_strict_vs_loose_and_summary():
  item = {"instruction_id_list": ["detectable_format:json_format", "punctuation:no_comma"], "kwargs": [{}, {}]}
  preamble = 'Sure here it is:\n{"a": 1}'        # strict fails the JSON, loose drops the first line
  s = ifeval.score(item, preamble)
  assert s == {"strict": [False, True], "loose": [True, True], "prompt_strict": False, "prompt_loose": True}
  bold = ifeval.score({"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "bye"}]}, "ok **bye**")
  assert bold["strict"] == [False] and bold["loose"] == [True]
  zero = ifeval.score(item, "Sure, here: {a}")   # comma and no JSON in any variant
  assert zero["strict"] == [False, False] and zero["loose"] == [False, False]
  summ = ifeval.summary([s, zero])
  assert summ == {"prompts": 2, "instructions": 4, "prompt_strict": 0.0, "prompt_loose": 50.0,
                  "instruction_strict": 25.0, "instruction_loose": 50.0}


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def test_ifeval_loader_reads_publishers_format_and_names_faults(tmp_path):
  hf_style = {"key": 1000, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
              "kwargs": [{"keywords": None, "num_words": None}, {"keywords": ["x"], "relation": None}]}
  items = ifeval.load(_write(tmp_path / "input_data.jsonl", json.dumps(hf_style) + "\n\n"))
  assert items == [{"id": "1000", "prompt": "p", "instruction_id_list": hf_style["instruction_id_list"],
                    "kwargs": [{}, {"keywords": ["x"]}]}]
  assert len(ifeval.load(files.sample_path("ifeval"))) == 14
  good = json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
  for row, match in [
      ({"key": 2, "instruction_id_list": [], "kwargs": []}, r"bad.jsonl:2: field 'prompt': missing"),
      ({"key": 2, "prompt": "p", "instruction_id_list": ["nope:x"], "kwargs": [{}]}, r":2: field 'instruction_id_list'"),
      ({"key": 2, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}, r":2: field 'kwargs'"),
      ({"key": 2, "prompt": "p", "instruction_id_list": ["keywords:existence"], "kwargs": [{"word": ["a"]}]},
       r":2: field 'kwargs': 'keywords:existence' takes \['keywords'\]"),
      ({"key": 2, "prompt": 3, "instruction_id_list": [], "kwargs": []}, r":2: field 'prompt': expected str")]:
    with pytest.raises(files.FormatError, match=match):
      ifeval.load(_write(tmp_path / "bad.jsonl", good + "\n" + json.dumps(row) + "\n"))
  with pytest.raises(files.FormatError, match=r"bad.jsonl:1: not a JSON object"):
    ifeval.load(_write(tmp_path / "bad.jsonl", "{key: 1}\n"))


# ---------------------------------------------------------------- GPQA

GPQA_HEADER = "Pre-Revision Question,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"


def test_gpqa_loader_shuffles_by_seed_and_names_faults(tmp_path):
  rows = "".join(f'x,"Q{i}, multi\nline",right{i},w{i}a,w{i}b,w{i}c\n' for i in range(40))
  path = _write(tmp_path / "gpqa_diamond.csv", GPQA_HEADER + rows)
  items = gpqa.load(path, seed=0)
  assert len(items) == 40 and items[3]["question"] == "Q3, multi\nline"
  assert all(it["options"]["ABCD".index(it["answer"])] == f"right{i}" for i, it in enumerate(items))
  assert {it["answer"] for it in items} == set("ABCD")                 # not always first
  assert [it["options"] for it in gpqa.load(path, seed=0)] == [it["options"] for it in items]
  assert [it["options"] for it in gpqa.load(path, seed=1)] != [it["options"] for it in items]
  with pytest.raises(files.FormatError, match=r"bad.csv:1: field 'Incorrect Answer 3': missing from the header"):
    gpqa.load(_write(tmp_path / "bad.csv", "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2\nq,a,b,c\n"))
  bad = GPQA_HEADER + 'x,"q1\nsecond line",a,b,c,d\nx,q2,a,b,,d\n'
  with pytest.raises(files.FormatError, match=r"bad.csv:4: field 'Incorrect Answer 2': empty"):
    gpqa.load(_write(tmp_path / "bad.csv", bad))


def test_gpqa_letter_extraction_and_scores():
  item = {"id": "q", "options": ["a", "b", "c", "d"], "answer": "C"}
  for text, letter in [("The answer is (C)", "C"), ("answer: c.", "C"), ("(C) because", "C"), ("C", "C"),
                       ("B) no wait. The answer is (C).", "C"), ("Answer is A, final answer: (D)", "D")]:
    assert gpqa.extract_letter(text) == letter, text
  for text in ("Clearly the third one.", "I cannot tell.", "A bit of both", ""):   # no letter: scores 0
    assert gpqa.extract_letter(text) is None, text
    assert gpqa.score_generated(item, text) == {"letter": None, "correct": False}
  assert gpqa.score_generated(item, "The answer is (B)")["correct"] is False
  s = gpqa.score_loglik(item, [-5.0, -9.0, -4.0, -8.0], [1, 1, 1, 1])
  assert s["loglik_letter"] == "C" and s["loglik_correct"]
  s = gpqa.score_loglik(item, [-5.0, -9.0, -6.0, -8.0], [1, 1, 12, 1])  # C wins only per character
  assert (s["loglik_letter"], s["loglik_correct"], s["loglik_norm_letter"], s["loglik_norm_correct"]) == (
      "A", False, "C", True)
  summ = gpqa.summary([{"correct": True, "letter": "C", "loglik_correct": False, "loglik_norm_correct": True},
                       {"correct": False, "letter": None, "loglik_correct": False, "loglik_norm_correct": False}])
  assert summ == {"questions": 2, "generated_accuracy": 50.0, "loglik_accuracy": 0.0, "loglik_norm_accuracy": 50.0,
                  "no_letter": 1}


# ---------------------------------------------------------------- AIME


def test_aime_extraction_rule():
  item = {"answer": 33}
  for text, got in [("so \\boxed{33}", 33), ("\\boxed{12} then \\boxed{033}", 33), ("The answer is 33.", 33),
                    ("Final answer: $33$, as 1,000 - 967", 33), ("we get 12 then 33", 33), ("\\boxed{ 33 }.", 33)]:
    assert aime.extract_answer(text) == got, text
    assert aime.score(item, text)["correct"], text
  for text, got in [("\\boxed{\\frac{1}{2}} 33", None), ("no number", None), ("answer is 34", 34),
                    ("33 was wrong, it is 35", 35),
                    ("Final answer: $1,000$ hmm 33", 1000), ("\\boxed{33.5}", None)]:     # all must score 0
    assert aime.extract_answer(text) == got, text
    assert not aime.score(item, text)["correct"], text
  assert aime.summary([aime.score(item, "\\boxed{33}"), aime.score(item, "?")]) == {
      "problems": 2, "accuracy": 50.0, "no_answer": 1}


def test_aime_loaders_jsonl_csv_and_faults(tmp_path):
  p = _write(tmp_path / "aime24.jsonl", '{"ID": "2024-I-1", "Problem": "p", "Answer": 204}\n')
  assert aime.load(p) == [{"id": "2024-I-1", "problem": "p", "answer": 204}]
  p = _write(tmp_path / "aime25.csv", 'id,problem,solution,answer\n7,"a\nb",s,033\n')
  assert aime.load(p) == [{"id": "7", "problem": "a\nb", "answer": 33}]
  assert [it["answer"] for it in aime.load(files.sample_path("aime"))] == [24, 24, 51, 19, 12, 400]
  for text, match in [('{"problem": "p", "answer": "x1"}', r"bad.jsonl:2: field 'answer': 'x1' is not an integer"),
                      ('{"problem": "p", "answer": 1000}', r"bad.jsonl:2: field 'answer': 1000 is outside"),
                      ('{"answer": 3}', r"bad.jsonl:2: field 'problem': missing"),
                      ('{"problem": "p", "answer": 2.5}', r"bad.jsonl:2: field 'answer': expected")]:
    with pytest.raises(files.FormatError, match=match):
      aime.load(_write(tmp_path / "bad.jsonl", '{"problem": "p", "answer": 1}\n' + text + "\n"))


# ---------------------------------------------------------------- runner on a tiny model


def test_runner_through_the_engine(tiny_tokenizer, tiny_policy):
  import ml_collections
  params, config = tiny_policy
  engine = SamplingEngine(params, config, stop_ids=tok_lib.stop_ids(tiny_tokenizer))
  c = runner.default_config()
  c.limit = 3
  c.ifeval_max_tokens = c.gpqa_max_tokens = c.aime_max_tokens = 6
  c.batch = 2                                                   # several engine calls
  loaded = runner.load_items(c)
  assert {k: (src, len(items)) for k, (src, items) in loaded.items()} == {
      "ifeval": ("sample", 3), "gpqa": ("sample", 3), "aime": ("sample", 3)}
  recs, summ = runner.evaluate(engine, tiny_tokenizer, c, loaded, decoding="greedy", seed=0, policy="p")
  assert [len(recs[k]) for k in runner.BENCHMARKS] == [3, 3, 3]
  assert all(r["tokens"] <= 6 for k in recs for r in recs[k])
  assert summ["gpqa"]["name"] == "GPQA-Diamond" and summ["ifeval"]["prompts"] == 3
  c.batch = 64
  again, _ = runner.evaluate(engine, tiny_tokenizer, c, loaded, decoding="greedy", seed=0, policy="p")
  assert [r["response"] for r in again["aime"]] == [r["response"] for r in recs["aime"]]  # batching-independent
  # Log-likelihoods match a direct forward pass of prompt + option.
  from deliberate.model import transformer
  import jax
  item = loaded["gpqa"][1][0]
  prompt = tok_lib.render_ids(tiny_tokenizer, [{"role": "user", "content": gpqa.prompt(item)}])
  cont = tiny_tokenizer.encode(item["options"][2], add_special_tokens=False)
  ids = np.asarray([prompt + cont], np.int32)
  logits, _ = transformer.apply(params, ids, np.arange(ids.shape[1])[None], config=config)
  lp = jax.nn.log_softmax(logits[0], -1)
  want = sum(float(lp[len(prompt) + k - 1, t]) for k, t in enumerate(cont))
  np.testing.assert_allclose(recs["gpqa"][0]["logliks"][2], want, rtol=1e-4, atol=1e-3)
  c.samples = 2
  sampled, _ = runner.evaluate(engine, tiny_tokenizer, c, {"aime": loaded["aime"]}, decoding="sampled", seed=0)
  assert [r["sample"] for r in sampled["aime"]] == [0, 1] * 3
  with pytest.raises(ValueError, match="config.capability.benchmarks"):
    runner.benchmarks(ml_collections.ConfigDict({"benchmarks": "ifeval,mmlu"}))


def test_prompts_render_with_thinking_off(tiny_tokenizer, tmp_path):
  """A Qwen3-style template that writes an empty think block when enable_thinking is false."""
  import copy
  tok = copy.deepcopy(tiny_tokenizer)
  tok.chat_template = (tok_lib.CHATML_TEMPLATE +
                       "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}")
  text = tok.decode(tok_lib.render_ids(tok, [{"role": "user", "content": aime.prompt({"problem": "x"})}]))
  assert text.endswith("<think></think>")
