"""Names of the metrics a run logs to `metrics.jsonl`: one definition shared by the tasks, the trainer, the plots.

Per step (training set) under these names; the evaluation-set negotiations during training (Figure 2) log the same
names under EVAL_PREFIX. `reward/*` is the training reward (0 without agreement); `ca/*` summarises the CA scores of
the completions that were written and scored, which in evaluation includes dialogues that did not agree.
"""
EVAL_PREFIX = "eval/"

# Rewards of the groups (what GRPO sees).
REWARD_GROUP_MIN = "reward/group_min"
REWARD_GROUP_MEAN = "reward/group_mean"
REWARD_GROUP_MAX = "reward/group_max"
ZERO_ADVANTAGE_FRACTION = "reward/zero_advantage_fraction"

# CA scores of the written, scored completions (what the evaluation reports).
CA_GROUP_MIN = "ca/group_min"
CA_GROUP_MEAN = "ca/group_mean"
CA_GROUP_MAX = "ca/group_max"
CA_SCORED = "ca/scored"
CA_FAILED = "ca/failed"

# Negotiation.
DIALOGUES = "negotiation/dialogues"
AGREEMENT_RATE = "negotiation/agreement_rate"
ROUNDS_TO_AGREEMENT = "negotiation/mean_rounds_to_agreement"  # over agreed dialogues (undefined with none)
ROUNDS_ALL = "negotiation/mean_rounds"    # over every judged dialogue; one that never agreed counts the turns it ran
FAILED_NEGOTIATION_FRACTION = "negotiation/failed_negotiation_fraction"
JUDGE_FAILED_FRACTION = "negotiation/judge_failed_fraction"
EXCLUDED = "negotiation/excluded"
TOKENS_PER_TURN = "negotiation/tokens_per_turn"
TRUNCATED_TURN_FRACTION = "negotiation/truncated_turn_fraction"
JUDGE_FAILURES = "negotiation/judge_failures"

# Judge client counters (per step) and timings.
JUDGE_COUNTERS = ("judge/requests", "judge/failures", "judge/cache_hits", "judge/cache_misses", "judge/retries",
                  "judge/truncated", "judge/parse_retries")
JUDGE_FAILURES_BY_REASON = "judge/failures/"  # prefix: final failures by reason, e.g. judge/failures/parse
MODEL_JUDGE_NAME = "deliberate-local-judge (model)"  # the embedded server's model backend: the policy judging itself
JUDGE_LABEL = "judge/label"  # not a number: written to records, printed on the progress line

TIME_ROLLOUT = "time/rollout_s"
TIME_JUDGE = "time/judge_s"
TIME_SAMPLE = "time/sample_s"
TIME_TRAIN = "time/train_s"
TRAIN_ROWS = "train/rows"
TRAIN_TOKENS = "train/tokens"
TRAIN_TOKENS_PER_S = "train/tokens_per_s"
LR = "lr"
OFFPOLICY_STALENESS = "offpolicy/staleness"  # steps between the policy that sampled and the one being updated
SKIPPED = "skipped"
SKIPPED_NO_ROWS = "skipped_no_rows"
SKIPPED_NO_SIGNAL = "skipped_no_signal"      # every advantage 0: no update
COMPILES = "compile/programs"                # programs compiled during the step
COMPILE_S = "compile/seconds"
SAMPLER_OVERFLOW = "compile/sampler_overflow"  # sampler programs compiled after the engine settled (0 when the task's
                                                # sampler_bounds hold every call)
NEW_SAMPLER_SHAPES = "compile/new_sampler_shapes"  # sampler programs (sampling params, Q, A, U, P, B) compiled this step
