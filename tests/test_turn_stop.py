"""The turn stop: extra stop ids for one engine call end a row there (the stop id kept, as drawn), and the
negotiation's stop ids are the ids whose text holds a blank line, a newline, or ends a sentence."""
import pytest

from deliberate.negotiation import config as neg_config, dialogue as episode
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams


def test_extra_stop_ids_end_a_row_and_stay_in_its_ids(tiny_policy):
  params, config = tiny_policy
  engine = SamplingEngine(params, config)
  sp = SamplingParams(temperature=1.0, max_new_tokens=12)
  reqs = [Request([5, 6, 7], 0), Request([8, 9], 1)]
  free = engine.generate(reqs, sp, seed=3)
  first = {o.tokens[0] for o in free}
  stopped = engine.generate(reqs, sp, seed=3, stop_ids=sorted(first))
  for f, s in zip(free, stopped):
    assert s.tokens == f.tokens[:1] and s.stop_reason == "stop"  # same draw, cut at the stop id, which is kept
  assert engine.generate(reqs, sp, seed=3)[0].tokens == free[0].tokens  # the next call has no extra stops


class _Tok:
  """A stand-in vocabulary: id i decodes to TEXTS[i]."""
  TEXTS = ["a", "\n", "\n\n", ".\n\n", "b\nc", " the", ".", " Mr.", "?\"", "3.", "!)", " ..."]

  def __len__(self):
    return len(self.TEXTS)

  def decode(self, ids):
    return "".join(self.TEXTS[i] for i in ids)


def test_paragraph_and_newline_stop_ids():
  assert episode.turn_stop_ids(_Tok(), "paragraph") == (2, 3)
  assert episode.turn_stop_ids(_Tok(), "newline") == (1, 2, 3, 4)
  # a sentence ends at a token of punctuation alone: abbreviations ("Mr.") and numbers ("3.") go on
  assert episode.turn_stop_ids(_Tok(), "sentence") == (3, 6, 8, 10, 11)
  assert episode.turn_stop_ids(_Tok(), "none") == ()


def test_bad_turn_stop_names_the_field():
  c = neg_config.default_config()
  c.turn_stop = "sentences"
  with pytest.raises(ValueError, match="config.negotiation.turn_stop"):
    neg_config.validate(c)
