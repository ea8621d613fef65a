"""The evaluation suite (docs/protocol.md): conflict-resolution negotiations, single-agent answers, pairwise win rates
judged in both orders, the cross-judge study, and policy loading from trained runs. Entry point: launch/evaluate.py."""
