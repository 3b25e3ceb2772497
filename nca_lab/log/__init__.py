"""Experiment loggers: one interface, a no-op and a Weights & Biases implementation."""
