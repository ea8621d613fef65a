"""A fast tokenizer rebuilt from GGUF metadata with `tokenizers` (transformers' own GGUF path needs torch).

Only the byte-level BPE pre-tokenisations whose regexes are known to match llama.cpp are accepted; any other
`tokenizer.ggml.pre` is refused rather than tokenised slightly wrong.
"""
from __future__ import annotations

from pathlib import Path

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from deliberate.model.gguf_io import gguf_meta, open_gguf

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_PRE_TOKENIZERS = {
    # SmolLM2: digits split one by one, then GPT-2's byte-level regex.
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)]),
}


def tokenizer_from_gguf(path: str | Path, reader: gguf.GGUFReader | None = None) -> PreTrainedTokenizerFast:
  """The GGUF's tokenizer as a PreTrainedTokenizerFast (saves and reloads with AutoTokenizer)."""
  reader = reader or open_gguf(path)
  meta = lambda key, default=None: gguf_meta(reader, f"tokenizer.ggml.{key}", path, default)
  kind, pre = meta("model"), meta("pre", "default")
  if kind != "gpt2":
    raise ValueError(f"{path}: field 'tokenizer.ggml.model' is {kind!r}; only byte-level BPE ('gpt2') is supported")
  if pre not in _PRE_TOKENIZERS:
    raise ValueError(f"{path}: field 'tokenizer.ggml.pre' is {pre!r}; supported: {sorted(_PRE_TOKENIZERS)}")
  tokens = gguf_meta(reader, "tokenizer.ggml.tokens", path)
  types = meta("token_type") or [1] * len(tokens)
  merges = [tuple(m.split(" ", 1)) for m in meta("merges", [])]
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                             byte_fallback=False))
  tok.pre_tokenizer = _PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types)
                  if k == _USER_DEFINED])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types)
                          if k == _CONTROL])
  name = lambda key: None if meta(key) is None else tokens[int(meta(key))]
  bos = name("bos_token_id")
  if meta("add_bos_token", False) and bos is not None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(meta("bos_token_id")))])
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=name("eos_token_id"),
                                pad_token=name("padding_token_id"), unk_token=name("unknown_token_id"))
  template = gguf_meta(reader, "tokenizer.chat_template", path, None)
  if template is not None:
    out.chat_template = template
  return out
