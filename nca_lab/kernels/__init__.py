"""Fused GPU kernels (Pallas) for the CA step: an opt-in alternative to the XLA path (``kernel=pallas``)."""
