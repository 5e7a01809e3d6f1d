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
