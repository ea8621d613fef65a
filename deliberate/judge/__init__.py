"""LLM judges over HTTP: an async OpenAI-compatible client with limits, retries and a sqlite cache; versioned
Collective-Agency and agreement rubrics; and a local judge server (deterministic lexicon or local model backend)."""
from deliberate.judge.client import JudgeClient, JudgeRequest, JudgeResult, ParseError
from deliberate.judge.config import default_judge_config
from deliberate.judge.judges import compare_ca, compare_resolution, judge_agreement, judge_ca
from deliberate.judge.runner import SyncJudge

__all__ = ["JudgeClient", "JudgeRequest", "JudgeResult", "ParseError", "SyncJudge", "compare_ca",
           "compare_resolution", "default_judge_config", "judge_agreement", "judge_ca"]
