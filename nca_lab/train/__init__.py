"""Training: the jitted step, the sample pool, optimizers, the loop and the composition root."""
