"""Verdicts read from a local model's logits, for the judge server's `model` backend.

A small local judge (the embedded SmolLM2) rambles past max_tokens and never writes `Score: N`, so its text yields no
reward. Here the judge reasons greedily for at most `reasoning_tokens`, its answer is cut before any final line it
wrote itself, the rubric's prefix (`Score:` / `Verdict:` / `Winner:`) is appended, and every allowed answer is scored
as a token sequence under the model: log p(answer | prompt, reasoning, prefix). The most probable one is the verdict,
so such a judge never fails to parse. Answers are tokenised in context (the ids the model would write after the
prefix), so an answer of several tokens is scored as the sum of its tokens' log-probs.

  python -m deliberate.judge.serve --backend model --generate-fn deliberate.judge.logits:smollm2
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deliberate.model import transformer
from deliberate.model import tokenizer as tok_lib
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.shapes import bucket_length
from deliberate.sampling.sampler import SamplingParams


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
  n = min(len(s) for s in seqs)
  for i in range(n):
    if len({s[i] for s in seqs}) > 1:
      return i
  return n


class LocalJudgeModel:
  """generate_fn of the `model` backend (text answers with their finish reason) plus `verdict` (logit verdicts)."""

  def __init__(self, params: Any, config: Any, tokenizer: Any, engine: SamplingEngine | None = None):
    self.params, self.config, self.tokenizer = params, config, tokenizer
    self.engine_stop_ids = set(tok_lib.stop_ids(tokenizer))
    self.engine = engine or SamplingEngine(params, config, stop_ids=sorted(self.engine_stop_ids))
    self._seed = 0

    def logprobs_at(params, lora, tokens_BxT, positions_BxT, index_BxK):
      h, _ = transformer.forward_hidden(params, tokens_BxT, positions_BxT, config=config, lora=lora)
      h = jnp.take_along_axis(h, index_BxK[..., None], axis=1)
      logits = jnp.dot(h, transformer.unembed_matrix(params, config).astype(h.dtype),
                       preferred_element_type=jnp.float32)
      return jax.nn.log_softmax(logits, axis=-1)

    self._logprobs_at = jax.jit(logprobs_at)

  def _generate(self, prompts: list[list[int]], max_tokens: int, temperature: float):
    sp = SamplingParams(greedy=temperature <= 0, temperature=max(temperature, 1e-3), max_new_tokens=max_tokens)
    self._seed += 1
    return self.engine.generate([Request(p, i) for i, p in enumerate(prompts)], sp, seed=self._seed)

  def __call__(self, messages_lists: list, max_tokens: int, temperature: float) -> list[tuple[str, str]]:
    outs = self._generate([tok_lib.render_ids(self.tokenizer, m) for m in messages_lists], max_tokens, temperature)
    return [(self.tokenizer.decode(o.tokens, skip_special_tokens=True), o.stop_reason) for o in outs]

  def _encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def answer_ids(self, continuation: str, answer: str) -> list[int]:
    """The ids the model writes for `answer` right after `continuation` (which ends in the prefix)."""
    base, full = self._encode(continuation), self._encode(f"{continuation} {answer}")
    if full[:len(base)] == base and len(full) > len(base):
      return full[len(base):]
    return self._encode(f" {answer}")

  def sequence_logprobs(self, contexts: Sequence[Sequence[int]],
                        answers: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
    """log p(answer ids | context ids) for each context and each of its answers, as sums over the answer's tokens.
    Answers sharing leading ids pay for them once; when what is left is one token each, one row scores them all."""
    rows, index, owners = [], [], []  # owners[r] = (context i, [(answer j, positions in the row's index, ids)])
    for i, (ctx, ans) in enumerate(zip(contexts, answers)):
      k = _common_prefix(ans)
      if all(len(a) == k + 1 for a in ans):
        ids = list(ctx) + list(ans[0][:k])
        pos = list(range(len(ctx) - 1, len(ids)))  # logits predicting the shared ids, then the last one
        rows.append(ids)
        index.append(pos)
        owners.append((i, [(j, list(range(len(pos))), list(a)) for j, a in enumerate(ans)]))
      else:
        for j, a in enumerate(ans):
          ids = list(ctx) + list(a[:-1])
          rows.append(ids)
          index.append(list(range(len(ctx) - 1, len(ids))))
          owners.append((i, [(j, list(range(len(a))), list(a))]))
    t = bucket_length(max(len(r) for r in rows))
    kmax = max(len(ix) for ix in index)
    out = [[0.0] * len(a) for a in answers]
    for start in range(0, len(rows), 8):
      chunk = range(start, min(start + 8, len(rows)))
      b = 8 if len(rows) > 8 else 1 << (len(chunk) - 1).bit_length()
      tokens, positions, idx = np.zeros((b, t), np.int32), np.tile(np.arange(t, dtype=np.int32), (b, 1)), \
          np.zeros((b, kmax), np.int32)
      for r, row in enumerate(chunk):
        tokens[r, :len(rows[row])] = rows[row]  # right padding: causal attention keeps it out of earlier logits
        idx[r, :len(index[row])] = index[row]
      # The engine's current params and adapters: a policy judging itself scores with the policy it samples.
      lp = np.asarray(self._logprobs_at(self.engine.params, self.engine.lora, jnp.asarray(tokens),
                                        jnp.asarray(positions), jnp.asarray(idx)))
      for r, row in enumerate(chunk):
        i, parts = owners[row]
        for j, slots, ids in parts:
          out[i][j] = float(sum(lp[r, s, tid] for s, tid in zip(slots, ids)))
    return out

  def verdict(self, messages_lists: list, reasoning_tokens: int, prefix: str,
              answers: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    """(answer text ending in `prefix best`, log-prob of every allowed answer) for each conversation."""
    prompts = [tok_lib.render_ids(self.tokenizer, m) for m in messages_lists]
    reasoning, reasoning_ids = [""] * len(prompts), [[] for _ in prompts]
    if reasoning_tokens > 0:
      outs = self._generate(prompts, reasoning_tokens, 0.0)
      cut = re.compile(rf"(?im)^[*_#>\s]*(?:final\s+)?{re.escape(prefix.rstrip(':'))}")
      decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)
      for n, o in enumerate(outs):
        ids = [t for t in o.tokens if t not in self.engine_stop_ids]
        m = cut.search(decode(ids))
        if m:  # the judge's own final line, if it wrote one, is replaced by the scored one
          while ids and len(decode(ids)) > m.start():
            ids = ids[:-1]
        reasoning_ids[n] = ids  # the sampled ids themselves: re-encoding decoded text can change them
        reasoning[n] = decode(ids).rstrip()
    self.last_reasoning_lengths = [len(r) for r in reasoning_ids]
    continuations = [f"{r}\n{prefix}" if r else prefix for r in reasoning]
    tails = [f"\n{prefix}" if r else prefix for r in reasoning]
    contexts = [p + r + self._encode(t) for p, r, t in zip(prompts, reasoning_ids, tails)]
    answer_ids = [[self.answer_ids(c, a) for a in answers] for c in continuations]
    scores = self.sequence_logprobs(contexts, answer_ids)
    results = []
    for c, s in zip(continuations, scores):
      lps = dict(zip(answers, s))
      results.append((f"{c} {max(lps, key=lps.get)}", lps))
    return results
