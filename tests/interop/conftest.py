"""Fixtures of the interop tests: the sample models' weights and a reference rollout of the lizard."""

import numpy as np
import pytest

from original_reference import TFJS_GRAPH, WEBGL8, decode_tfjs_graph, decode_webgl8, reference_step, seed


@pytest.fixture(scope="session")
def webgl8_weights():
    """The sample webgl8 lizard's weights, decoded by the test."""
    return decode_webgl8(WEBGL8)


@pytest.fixture(scope="session")
def tfjs_graph_weights():
    """The sample graph-model's weights, decoded by the test."""
    return decode_tfjs_graph(TFJS_GRAPH)


@pytest.fixture(scope="session")
def reference_lizard(webgl8_weights) -> dict[int, np.ndarray]:
    """States of a 200-step reference rollout of the webgl8 lizard from the seed (fire rate 0.5).

    Keys are steps 100 and 200; the fire masks come from NumPy's generator, seed 0.
    """
    rng = np.random.default_rng(0)
    state, kept = seed(), {}
    for step in range(1, 201):
        state = reference_step(state, webgl8_weights, rng.random(state.shape[:2]) <= 0.5)
        if step in (100, 200):
            kept[step] = state
    return kept
