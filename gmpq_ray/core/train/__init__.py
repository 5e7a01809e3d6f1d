"""Training: the epoch loop, the FP teacher, QAT of a discrete policy, distributed finetuning's
pieces, and evaluation with ARC."""
