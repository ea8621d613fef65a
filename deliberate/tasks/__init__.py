"""Training modes: each a `Task` (tasks/base.py) that turns a step's prompts into a `Rollout`.

negotiation   the paper: two persona agents negotiate; the CA score of Agent 1's final completion is the reward
single_agent  the predecessor's self-rewarding baseline: G answers per open question, scored for CA
The registry (mode -> module, config section) is tasks/config.py:MODES.
"""
