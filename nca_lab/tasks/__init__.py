"""Tasks: the experiments an NCA is trained on (one module per task)."""
