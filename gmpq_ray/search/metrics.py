"""Names of the metrics search trials report every epoch (declared once, used everywhere).

Both trial kinds report every key, so that the scheduler and the comparison judge them alike.
"""

TRIAL_METRICS: dict[str, str] = {
    "loss": "training loss of the supernet (CE + attribution + complexity terms)",
    "ce": "training cross-entropy",
    "attr_loss": "training attribution-imitation loss",
    "accuracy": "validation top-1 of the supernet (mixed bits)",
    "arc": "validation attribution rank consistency of the supernet",
    "expected_bops_g": "expected searched-layer BOPs under softmax(alpha), G",
    "argmax_bops_g": "searched-layer BOPs of the argmax policy (sampled: of the raw proposal), G",
    "argmax_accuracy": "validation top-1 of the argmax policy (supernet's weights, BN re-estimated; sampled: of the evaluated policy)",
    "policy_bops_g": "searched-layer BOPs of the derived policy (the argmax, repaired if over the limit, filled if asked), G",
    "policy_accuracy": "validation top-1 of the derived policy with the supernet's weights, BN re-estimated",
    "repair_steps": "single-layer bit steps the repair lowered to meet the limit",
    "fill_steps": "single-layer bit steps the fill raised towards the limit",
    "policy_arc": "validation ARC of the derived policy",
    "score": "the objective: policy_accuracy + arc_weight * policy_arc",
    "budget_bops_g": "the BOPs the scheduler holds against the limit (sampled: the policy's; supernet: its argmax policy's)",
}

# Why the scheduler stopped a trial early (recorded in trials.csv and in the Optuna study).
STOP_BOPS_LIMIT = "bops_limit"
STOP_ARC = "arc"

# The metrics code refers to by name (the keys of TRIAL_METRICS above; these are the names on disk).
LOSS = "loss"
ARC = "arc"
ARGMAX_BOPS_G = "argmax_bops_g"
EXPECTED_BOPS_G = "expected_bops_g"
POLICY_BOPS_G = "policy_bops_g"
POLICY_ACCURACY = "policy_accuracy"
SCORE = "score"
BUDGET_BOPS_G = "budget_bops_g"
REPAIR_STEPS = "repair_steps"
FILL_STEPS = "fill_steps"
# Keys of a reported result besides the metrics.
EPOCH = "epoch"
ERROR = "error"
TRIAL_ID = "trial_id"
DONE = "done"
TIME_TOTAL_S = "time_total_s"

# trials.csv: one row a trial. Its columns, in order: these four, the method's own (the tuned
# hyper-parameters, or the sampled bits as PROPOSAL), the metrics, the time and the error.
TRIALS_FILE = "trials.csv"
STATUS = "status"
STOP_REASON = "stop_reason"
EPOCHS = "epochs"
PROPOSAL = "proposal"
TRIAL_COLUMNS_FIRST = (TRIAL_ID, STATUS, STOP_REASON, EPOCHS)
TRIAL_COLUMNS_LAST = (TIME_TOTAL_S, ERROR)
# A trial's status in trials.csv.
TERMINATED = "TERMINATED"
PRUNED = "PRUNED"
STOPPED = "STOPPED"
FAILED = "ERROR"
# Why a trial still running when the search's wall-clock budget ran out stopped.
STOP_TIME_BUDGET = "time_budget"
