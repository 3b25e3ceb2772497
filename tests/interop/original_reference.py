"""A NumPy reference of the original Growing-NCA step, and decoders of the two sample files.

Written from the format facts (``tests/data/reference_models/README.md``; the authors'
``CAModel.call``) without calling nca_lab, so that the importers and nca_lab's step are
checked against an independent reading of the original model.
"""

import base64
import json
import math
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parent.parent / "data" / "reference_models"
WEBGL8 = MODELS / "distill_ex3_lizard.webgl8.json"
TFJS_GRAPH = MODELS / "no_tail_lizard.tfjs_graph.json"
CHANNELS = 16


def decode_webgl8(path: Path) -> tuple[np.ndarray, ...]:
    """``(w1, b1, w2, b2)`` in float64 with ``w1`` rows in TF order ``channel * 3 + filter``."""
    layers = []
    for layer in json.loads(path.read_text()):
        raw = np.frombuffer(base64.b64decode(layer["data_b64"]), np.uint8)
        unit = raw.reshape(layer["in_ch"] + 1, layer["out_ch"]) / 255.0 - 0.5
        layers += [unit[:-1] * layer["weight_scale"], unit[-1] * layer["bias_scale"]]
    w1, b1, w2, b2 = layers
    demo_row = [f * CHANNELS + c for c in range(CHANNELS) for f in range(3)]  # TF row c*3+f is demo row f*16+c
    return w1[demo_row], b1, w2, b2


def decode_tfjs_graph(path: Path) -> tuple[np.ndarray, ...]:
    """``(w1, b1, w2, b2)`` of a graph-model, found as the float Consts of the four weight shapes."""
    by_shape = {}
    for node in json.loads(path.read_text())["modelTopology"]["node"]:
        tensor = node.get("attr", {}).get("value", {}).get("tensor", {})
        if node["op"] == "Const" and "tensorContent" in tensor and tensor["dtype"] == "DT_FLOAT":
            shape = tuple(int(d.get("size", 0)) for d in tensor["tensorShape"]["dim"])
            by_shape[shape] = np.frombuffer(base64.b64decode(tensor["tensorContent"]), "<f4").reshape(shape)
    return (
        by_shape[(1, 1, 48, 128)][0, 0].astype(np.float64),
        by_shape[(128,)].astype(np.float64),
        by_shape[(1, 1, 128, 16)][0, 0].astype(np.float64),
        by_shape[(16,)].astype(np.float64),
    )


def _living(state: np.ndarray, threshold: float) -> np.ndarray:
    """3x3 max-pool of alpha (padding never wins) above ``threshold``, shape ``(H, W, 1)``."""
    h, w = state.shape[:2]
    padded = np.pad(state[..., 3], 1, constant_values=-np.inf)
    pooled = np.max([padded[a : a + h, b : b + w] for a in range(3) for b in range(3)], axis=0)
    return (pooled > threshold)[..., None]


def reference_step(state, weights, fire_mask, angle: float = 0.0, threshold: float = 0.1) -> np.ndarray:
    """One step of the original ``CAModel`` on ``state (H, W, 16)`` in float64.

    ``fire_mask (H, W)`` says which cells apply their update.
    """
    w1, b1, w2, b2 = weights
    sobel_x = np.outer([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0]) / 8.0
    sobel_y = sobel_x.T
    c, s = math.cos(angle), math.sin(angle)
    identity = np.zeros((3, 3))
    identity[1, 1] = 1.0
    kernels = [identity, c * sobel_x - s * sobel_y, s * sobel_x + c * sobel_y]
    h, w, channels = state.shape
    padded = np.pad(state, ((1, 1), (1, 1), (0, 0)))
    perception = np.zeros((h, w, channels, 3))
    for f, kernel in enumerate(kernels):
        for a in range(3):
            for b in range(3):  # cross-correlation: out[i, j] += K[a, b] * x[i + a - 1, j + b - 1]
                perception[..., f] += kernel[a, b] * padded[a : a + h, b : b + w]
    y = perception.reshape(h, w, 3 * channels)  # channel * 3 + filter
    dx = np.maximum(y @ w1 + b1, 0.0) @ w2 + b2
    updated = state + dx * fire_mask[..., None]
    return updated * (_living(state, threshold) & _living(updated, threshold))


def seed(h: int = 72, w: int = 72) -> np.ndarray:
    """The standard seed: the centre cell's channels 3.. are 1."""
    state = np.zeros((h, w, CHANNELS))
    state[h // 2, w // 2, 3:] = 1.0
    return state
