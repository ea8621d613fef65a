"""Multi-turn chat sampling: compaction, id histories and shared-prompt prefill."""
from deliberate.sampling.engine import SamplingEngine
from deliberate.sampling.multiturn import Conversation, next_turns
from deliberate.sampling.sampler import SamplingParams


def test_turns_compact_finished_conversations_and_keep_ids(tiny_policy, tiny_tokenizer):
  params, config = tiny_policy
  engine = SamplingEngine(params, config)
  sp = SamplingParams(temperature=0.7, max_new_tokens=5)
  convs = [Conversation(i, "You are Ada." if i < 2 else "You are Bo.",
                        [{"role": "user", "content": "Share the garden?"}]) for i in range(4)]
  first = next_turns(engine, tiny_tokenizer, convs, sp, seed=0)
  assert sorted(first) == [0, 1, 2, 3]
  assert engine.last_stats["unique_prompts"] == 2            # two personas, four conversations: two prefills
  assert first[0].tokens != first[1].tokens                  # same prompt, own randomness
  for c in convs:
    assert c.messages[-1] == {"role": "assistant", "content": first[c.id].tokens}
    c.messages.append({"role": "user", "content": "And then?"})
  convs[1].done = convs[3].done = True
  second = next_turns(engine, tiny_tokenizer, convs, sp, seed=0)
  assert sorted(second) == [0, 2] and engine.last_stats["batch"] == 2  # finished ones are not computed
  # A conversation's turn does not depend on which others are active.
  alone = [Conversation(0, "You are Ada.", [dict(m) for m in convs[0].messages[:-1]])]
  assert next_turns(engine, tiny_tokenizer, alone, sp, seed=0)[0].tokens == second[0].tokens
