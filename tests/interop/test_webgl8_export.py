"""Export to the web demo's webgl8 format: quantisation as the format says, and a lossless-ish round trip."""

import base64
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from nca_lab.errors import ConfigError
from nca_lab.interop import read_model, read_webgl8, to_webgl8
from nca_lab.interop.original import original_nca
from nca_lab.nca import NCA
from nca_lab.perceive.learned import LearnedPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

from original_reference import WEBGL8
from webgl8_checks import assert_within_quantisation, dense_params


def random_model(seed: int = 0, step_size: float = 1.0) -> NCA:
    """An original-architecture model with random weights in every layer (the last one too)."""
    rng = np.random.default_rng(seed)
    model = original_nca(
        rng.normal(0, 0.2, (48, 128)), rng.normal(0, 0.05, 128), rng.normal(0, 0.1, (128, 16)), rng.normal(0, 0.01, 16)
    )
    model.update.step_size = step_size
    return model


def decoded_bytes(layer: dict) -> np.ndarray:
    """A layer's ``(in_ch + 1, out_ch)`` byte matrix."""
    raw = np.frombuffer(base64.b64decode(layer["data_b64"]), np.uint8)
    return raw.reshape(layer["in_ch"] + 1, layer["out_ch"])


def test_sample_exports_back_to_the_identical_file():
    exported = to_webgl8(read_model(WEBGL8), "sample")
    assert json.dumps(exported) == WEBGL8.read_text()


def test_quantisation_is_the_formats():
    model = random_model()
    w1, b1, w2, b2 = dense_params(model)
    layers = to_webgl8(model, "model")
    assert [(layer["in_ch"], layer["out_ch"], layer["type"]) for layer in layers] == [
        (48, 128, "uint8"),
        (128, 16, "uint8"),
    ]
    assert list(layers[0]) == ["data_b64", "in_ch", "out_ch", "weight_scale", "bias_scale", "type"]
    first, second = (decoded_bytes(layer) for layer in layers)
    # scale = 2 max|v| per part; byte = round((v / scale + 0.5) * 255); first layer rows filter-major
    scale = 2 * np.abs(w1).max()
    assert layers[0]["weight_scale"] == pytest.approx(scale, rel=1e-7)
    assert layers[0]["bias_scale"] == pytest.approx(2 * np.abs(b1).max(), rel=1e-7)
    for f in range(3):
        for c in range(16):
            expected = np.round((w1[c * 3 + f] / scale + 0.5) * 255)
            np.testing.assert_array_equal(first[f * 16 + c], expected)
    np.testing.assert_array_equal(second[-1], np.round((b2 / (2 * np.abs(b2).max()) + 0.5) * 255))
    assert first.min() == 0 or first.max() == 255  # the largest weight uses the end of the range


@pytest.mark.parametrize("step_size", [1.0, 0.5])
def test_round_trip_is_within_quantisation_error(step_size):
    model = random_model(seed=1, step_size=step_size)
    layers = to_webgl8(model, "model")
    back = read_webgl8(json.loads(json.dumps(layers)), "exported")
    expected = dense_params(model)
    expected[2:] = [p * step_size for p in expected[2:]]  # the step size is folded into the last layer
    assert_within_quantisation(expected, back, layers)


def test_untrained_model_exports_its_zero_last_layer():
    rngs = nnx.Rngs(params=0)
    model = NCA(SobelPerceive(16), ResidualUpdate(48, 16, hidden_sizes=[128], rngs=rngs))
    layers = to_webgl8(model, "untrained")
    assert layers[1]["weight_scale"] == 0.0 and layers[1]["bias_scale"] == 0.0
    back = read_webgl8(layers, "untrained")
    assert not np.asarray(back.update.out.kernel[...]).any() and not np.asarray(back.update.out.bias[...]).any()


class GatedUpdate(ResidualUpdate):
    """A researcher's variant built on the residual update (its own step, not the demo's)."""

    def __call__(self, state, perception, key):
        return state + jax.nn.sigmoid(self.delta(perception)) * self.fire_mask(key, state.shape[:-1])


def other_models() -> dict[str, tuple[NCA, str]]:
    rngs = nnx.Rngs(params=0)
    learned = LearnedPerceive(16, rngs=rngs)
    huge = NCA(SobelPerceive(16), ResidualUpdate(48, 16, rngs=rngs))
    huge.update.hidden[0].kernel[0, 0] = 2e38  # finite; twice it, the layer's scale, is not
    return {
        "another update": (NCA(SobelPerceive(16), GatedUpdate(48, 16, rngs=rngs)), "this model has GatedUpdate"),
        "learned perceive": (NCA(learned, ResidualUpdate(48, 16, rngs=rngs)), "LearnedPerceive of 16 channels"),
        "12 channels": (NCA(SobelPerceive(12), ResidualUpdate(36, 12, rngs=rngs)), "SobelPerceive of 12 channels"),
        "hidden 64": (NCA(SobelPerceive(16), ResidualUpdate(48, 16, hidden_sizes=[64], rngs=rngs)), "has [64]"),
        "no alive mask": (
            NCA(SobelPerceive(16), ResidualUpdate(48, 16, rngs=rngs), alive_threshold=None),
            "this model has no alive masking",
        ),
        "weights past the scale": (huge, "weights too large for the format"),
        "fixed input": (
            NCA(SobelPerceive(16), ResidualUpdate(48, 16, rngs=rngs), fixed_channels=4),
            "the web demo updates every channel; this model holds 4 fixed (its input)",
        ),
    }


@pytest.mark.parametrize("name", sorted(other_models()))
def test_models_the_demo_cannot_run_are_refused(name):
    model, message = other_models()[name]
    with pytest.raises(ConfigError, match=f"^ckpt: .*{re.escape(message)}"):
        to_webgl8(model, "ckpt")
