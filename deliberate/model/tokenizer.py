"""Tokenizers and token-in/token-out chat rendering.

Sampled ids are the ground truth for training: a chat template may rewrite earlier turns and BPE is not a bijection,
so decoding a turn and re-tokenising it can give different ids than the ones the model produced. `render_ids`
renders a conversation with the tokenizer's own chat template but splices already-sampled turns in as their ids.
"""
from __future__ import annotations

import json
import numbers
import os
from typing import Any, Sequence, Union

import transformers

Ids = Sequence[int]
Content = Union[str, Ids, Sequence[Union[str, Ids]]]  # text, sampled ids, or a list of text and id parts
_SENTINEL = "\ue000{}\ue001"         # private-use code points: never produced by a real conversation

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """A tokenizer from a local directory (never from a hub)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory not found: {path}")
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def chat_template_kwargs(tokenizer) -> dict[str, Any]:
  """Template switches deliberate always sets: Qwen3's thinking mode is off (the paper samples without it)."""
  template = tokenizer.chat_template or ""
  return {"enable_thinking": False} if "enable_thinking" in template else {}


def stop_ids(tokenizer) -> list[int]:
  """Ids that end a turn: EOS plus the template's end-of-turn marker when the vocabulary has one."""
  ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
  for marker in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"):
    tid = tokenizer.convert_tokens_to_ids(marker)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
      ids.add(tid)
  return sorted(ids)


def render_ids(tokenizer, messages: Sequence[dict[str, Content]], add_generation_prompt: bool = True,
               stop: Sequence[int] = ()) -> list[int]:
  """Ids of a chat rendered by the tokenizer's template, with id-valued contents spliced in verbatim.

  A trailing stop id on a sampled turn is dropped, since the template writes its own end-of-turn marker.
  """
  stop = set(stop) or set(stop_ids(tokenizer))
  spliced: list[list[int]] = []

  def placeholder(ids: Ids) -> str:
    ids = [int(t) for t in ids]
    while ids and ids[-1] in stop:
      ids.pop()
    spliced.append(ids)
    return _SENTINEL.format(len(spliced) - 1)

  text_messages = []
  for m in messages:
    content = m["content"]
    if not isinstance(content, str):
      parts = [content] if all(isinstance(t, numbers.Integral) for t in content) else content
      content = "".join(p if isinstance(p, str) else placeholder(p) for p in parts)
    text_messages.append({**m, "content": content})
  text = tokenizer.apply_chat_template(text_messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       **chat_template_kwargs(tokenizer))
  out: list[int] = []
  for i, ids in enumerate(spliced):
    marker = _SENTINEL.format(i)
    if text.count(marker) != 1:
      raise ValueError(f"chat template dropped or repeated sampled message {i}; cannot splice its ids")
    before, text = text.split(marker)
    out += tokenizer.encode(before, add_special_tokens=False) + ids
  return out + tokenizer.encode(text, add_special_tokens=False)


def train_sentencepiece(texts: Sequence[str], out_dir: str, vocab_size: int = 256) -> transformers.PreTrainedTokenizerBase:
  """A tiny BPE sentencepiece tokenizer with ChatML markers, trained in seconds, for tests and tiny models."""
  import io

  import sentencepiece as spm
  os.makedirs(out_dir, exist_ok=True)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
      user_defined_symbols=["<|im_start|>", "<|im_end|>"], pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
  with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
    f.write(model.getvalue())
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|im_end|>",
               "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": False, "add_eos_token": False,
               "legacy": False, "chat_template": CHATML_TEMPLATE}, f)
  return load_tokenizer(out_dir)
