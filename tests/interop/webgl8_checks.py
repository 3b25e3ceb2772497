"""Comparing a model with its webgl8 export read back: every value within its part's ``scale / 510``."""

import numpy as np


def dense_params(model) -> list[np.ndarray]:
    """``[w1, b1, w2, b2]`` of an original-architecture NCA as NumPy arrays."""
    hidden, out = model.update.hidden[0], model.update.out
    return [np.asarray(p[...]) for p in (hidden.kernel, hidden.bias, out.kernel, out.bias)]


def assert_within_quantisation(expected: list[np.ndarray], back, layers: list[dict]) -> None:
    """``back``'s parameters equal ``expected`` up to the rounding error of ``layers``' scales."""
    scales = [layers[0]["weight_scale"], layers[0]["bias_scale"], layers[1]["weight_scale"], layers[1]["bias_scale"]]
    for before, after, scale in zip(expected, dense_params(back), scales, strict=True):
        assert np.abs(after - before).max() <= scale / 510 * (1 + 1e-5), (scale, np.abs(after - before).max())
