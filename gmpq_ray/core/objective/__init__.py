"""The GMPQ search objective: attribution maps and rank consistency, the complexity term, and the
loss that combines them with cross-entropy."""
