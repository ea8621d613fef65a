"""A deterministic stand-in generate_fn factory for `serve --backend model` in tests and demos (no weights needed):
`python -m deliberate.judge.serve --backend model --generate-fn deliberate.judge.echo_model:factory`.

It answers `<n> chars.\\nScore: <n mod 6>` for a prompt of n characters, and reports 'length' when max_tokens < 4,
so a client sees both finish reasons of a real model."""
from __future__ import annotations


def factory():
  def generate(batch, max_tokens, temperature):
    outs = []
    for messages in batch:
      n = len(messages[-1]["content"])
      text = f"{n} chars.\nScore: {n % 6}"
      outs.append((text, "stop") if max_tokens >= 4 else (" ".join(text.split()[:max_tokens]), "length"))
    return outs
  return generate
