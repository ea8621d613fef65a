"""Tokenizers and token-in/token-out rendering, checked at the level of ids."""
import pytest

from deliberate.model import registry
from deliberate.model import tokenizer as tk


@pytest.fixture(scope="module")
def smollm_tokenizer():
  return registry.load_tokenizer("smollm2-135m") if hasattr(registry, "load_tokenizer") else \
      registry.load_policy("smollm2-135m")[2]


def test_sentencepiece_trains_in_seconds_and_round_trips(tiny_tokenizer):
  ids = tiny_tokenizer.encode("We agree to split the budget.", add_special_tokens=False)
  assert ids and tiny_tokenizer.decode(ids) == "We agree to split the budget."
  assert tk.stop_ids(tiny_tokenizer) == [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_render_ids_splices_sampled_ids_verbatim(tiny_tokenizer):
  tok = tiny_tokenizer
  sampled = [7, 8, 9, 300, 11]  # any ids, even ones a tokenizer would never produce for their text
  stop = tk.stop_ids(tok)
  ids = tk.render_ids(tok, [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": ["They said: ", sampled, " Reply."]},
                            {"role": "assistant", "content": sampled + stop}], add_generation_prompt=True)
  text_only = tk.render_ids(tok, [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "They said: "}], add_generation_prompt=False)
  # The prefix up to the first splice is the plain tokenisation of the rendered text.
  assert ids[:len(text_only) - 2] == text_only[:len(text_only) - 2]
  # The sampled ids appear twice, verbatim, and the trailing stop id of the assistant turn is not doubled.
  starts = [i for i in range(len(ids)) if ids[i:i + len(sampled)] == sampled]
  assert len(starts) == 2
  end_marker = tok.convert_tokens_to_ids("<|im_end|>")
  assert ids[starts[1] + len(sampled)] == end_marker
  assert ids[starts[1] + len(sampled) + 1] != end_marker
  # The generation prompt closes the render.
  gen = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
  assert ids[-len(gen):] == gen


def test_retokenising_would_change_sampled_ids(smollm_tokenizer):
  """Why sampled ids are kept: a model may emit a non-canonical split that re-tokenisation merges."""
  tok = smollm_tokenizer
  word = tok.encode(" negotiation", add_special_tokens=False)
  pieces = tok.encode(" negoti", add_special_tokens=False) + tok.encode("ation", add_special_tokens=False)
  sampled = tok.encode(" We need a", add_special_tokens=False) + pieces
  retokenised = tok.encode(tok.decode(sampled), add_special_tokens=False)
  assert pieces != word and retokenised != sampled  # same text, different ids
  rendered = tk.render_ids(tok, [{"role": "user", "content": "Open."}, {"role": "assistant", "content": sampled}],
                           add_generation_prompt=False)
  assert any(rendered[i:i + len(sampled)] == sampled for i in range(len(rendered)))


def test_qwen3_style_template_gets_thinking_off(tiny_tokenizer):
  class Fake:
    chat_template = "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
  assert tk.chat_template_kwargs(Fake()) == {"enable_thinking": False}
  assert tk.chat_template_kwargs(tiny_tokenizer) == {}


def test_load_tokenizer_needs_a_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
    tk.load_tokenizer(str(tmp_path / "missing"))
