"""Training rows and loss masks, token by token on a known dialogue."""
import numpy as np
import pytest

from deliberate.negotiation import episode, records, rows
from deliberate.rl import batch as batch_lib
from deliberate.show import format_record, main as show_main

PERSONA = dict(values=["v"], priorities=["p"], red_lines=["r"])
PAIR = {"pair_id": "p01", "a": dict(PERSONA, id="p01a", name="Ada"), "b": dict(PERSONA, id="p01b", name="Bo")}
DILEMMA = {"id": "every-001", "text": "A dilemma."}


def _dialogue(index, agents, excluded=False):
  d = episode.Dialogue(index, 0, DILEMMA, PAIR)
  for k, agent in enumerate(agents):
    prompt = [100 + 10 * k + i for i in range(3 + k)]           # distinct prompt ids per turn
    response = [500 + 10 * k + i for i in range(2 + k)]
    d.turns.append(episode.Turn(agent, prompt, response, [-0.1 * (i + 1) for i in range(len(response))],
                                f"turn {k}", "stop", agreed=k == len(agents) - 1))
  d.agreed, d.completion_ids, d.completion_text, d.score, d.reward = True, [900, 901], "We agree.", 4, 4.0
  d.excluded = excluded
  return d


def test_mask_covers_only_dialogue_responses():
  d = _dialogue(0, [1, 2])
  batch = batch_lib.collate(rows.dialogue_rows([d]), advantages=[1.5], length=12, batch=4)
  # Row 0: prompt [100,101,102], response [500,501]; row 1: prompt [110..113], response [510,511,512].
  np.testing.assert_array_equal(batch["tokens_BxT"][0, :5], [100, 101, 102, 500, 501])
  np.testing.assert_array_equal(batch["loss_mask_BxT"][0], [0, 0, 0, 1, 1] + [0] * 7)
  np.testing.assert_array_equal(batch["loss_mask_BxT"][1], [0, 0, 0, 0, 1, 1, 1] + [0] * 5)
  np.testing.assert_array_equal(batch["positions_BxT"][1], list(range(7)) + [-1] * 5)
  np.testing.assert_allclose(batch["old_logprobs_BxT"][1, 4:7], [-0.1, -0.2, -0.3])
  assert batch["old_logprobs_BxT"][1, :4].sum() == 0 and batch["old_logprobs_BxT"][1, 7:].sum() == 0
  np.testing.assert_array_equal(batch["advantages_B"], [1.5, 1.5, 0, 0])
  np.testing.assert_array_equal(batch["seq_ids_B"], [0, 0, -1, -1])
  assert batch["loss_mask_BxT"][2:].sum() == 0                     # padding rows
  assert 900 not in batch["tokens_BxT"]                            # the final completion never enters training


def test_agent1_only_masks_agent2():
  d = _dialogue(0, [1, 2, 1])
  all_rows = rows.dialogue_rows([d], agent1_only=True)
  kept = batch_lib.collate(all_rows, [1.0], drop_untrained=False)
  np.testing.assert_array_equal(kept["loss_mask_BxT"].sum(1), [2, 0, 4])  # agent 2's 3 tokens masked out
  assert batch_lib.collate(all_rows, [1.0])["tokens_BxT"].shape[0] == 2      # dropped when training


def test_excluded_dialogues_give_no_rows_and_collate_checks_length():
  assert rows.dialogue_rows([_dialogue(0, [1, 2], excluded=True)]) == []
  with pytest.raises(ValueError, match="exceeds the step's length"):
    batch_lib.collate(rows.dialogue_rows([_dialogue(0, [1, 2])]), [0.0], length=4)


def test_records_rotate_append_and_show(tmp_path, capsys):
  writer = records.RecordWriter(str(tmp_path), max_bytes=300)
  for i in range(3):
    writer.write(records.dialogue_record(_dialogue(i, [1, 2]), step=1))
  writer.close()
  files = sorted(p.name for p in tmp_path.iterdir())
  assert len(files) == 3 and files[0] == "dialogues-00000.jsonl"   # one record per file past 300 bytes
  writer = records.RecordWriter(str(tmp_path), max_bytes=1 << 20)  # resumes the last file
  writer.write(records.dialogue_record(_dialogue(3, [1]), step=2))
  writer.close()
  got = list(records.read_records(str(tmp_path)))
  assert [r["index"] for r in got] == [0, 1, 2, 3]
  assert got[0]["turns"][1]["ids"] == [510, 511, 512] and got[0]["score"] == 4
  text = format_record(got[0])
  assert "turn 2, Agent 2 [agreed]" in text and "We agree." in text
  assert show_main([str(tmp_path), "--step", "2"]) == 0
  assert "dialogue 3" in capsys.readouterr().out
  (tmp_path / "dialogues-00009.jsonl").write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r"dialogues-00009.jsonl:2"):
    list(records.read_records(str(tmp_path)))


def test_truncated_turns_masked_only_when_asked():
  d = _dialogue(0, [1, 2, 1])
  d.turns[1].stop_reason = "length"                                # Agent 2's turn was cut at the token limit
  assert all(r.trained for r in rows.dialogue_rows([d]))          # 'keep', the default
  masked = rows.dialogue_rows([d], mask_truncated=True)
  assert [r.trained for r in masked] == [True, False, True]


def test_records_name_their_judge():
  lexicon = "deterministic-local-judge (lexicon)"
  r = records.dialogue_record(_dialogue(0, [1, 2]), step=1, judge=lexicon)
  assert r["judge"] == lexicon and "deterministic local judge" in r["judge_kind"]
  text = format_record(r)
  assert "lexicon-CA score 4" in text and "not an LLM" in text and "| CA score" not in text
  llm = records.dialogue_record(_dialogue(0, [1, 2]), step=1, judge="gpt-4o-mini")
  assert llm["judge_kind"] == "LLM judge" and "| CA score 4" in format_record(llm)
