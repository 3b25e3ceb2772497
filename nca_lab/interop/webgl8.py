"""The 8-bit JSON format of the article's WebGL demo ("webgl8"): read and write.

A model is a JSON list of two dense layers, ``48 -> 128`` and ``128 -> 16``. Each layer is
``{"data_b64", "in_ch", "out_ch", "weight_scale", "bias_scale", "type": "uint8"}``, where the
payload is a row-major ``(in_ch + 1, out_ch)`` byte matrix (weights, then one bias row)
and a byte ``q`` stands for ``(q / 255 - 0.5) * scale``. The exporter picks
``scale = 2 * max|v|`` per part, so the rounding error is at most ``scale / 510``.

The demo packs the perception tensor by filter band, so the first layer's 48 input rows
are filter-major (``filter * 16 + channel``) instead of TF's ``channel * 3 + filter``; this
module permutes them both ways.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020; the demo's
``public/ca.js`` (distillpub/post--growing-ca) and the notebook's ``pack_layer`` /
``export_ca_to_webgl_demo`` (google-research/self-organising-systems).
"""

import base64
import binascii

import numpy as np

from nca_lab.alive import ALIVE_THRESHOLD
from nca_lab.errors import ConfigError, is_number, require
from nca_lab.interop.original import CHANNELS, HIDDEN, PERCEPTION, original_nca
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

#: ``(in_ch, out_ch)`` of the two layers the demo runs.
LAYER_SIZES = ((PERCEPTION, HIDDEN), (HIDDEN, CHANNELS))
FIELDS = ("data_b64", "in_ch", "out_ch", "weight_scale", "bias_scale", "type")


def is_webgl8(document) -> bool:
    """Whether a parsed JSON document looks like a webgl8 model (a list of layer objects)."""
    return (
        isinstance(document, list)
        and len(document) > 0
        and all(isinstance(layer, dict) and "data_b64" in layer for layer in document)
    )


def filter_major_to_tf(weight: np.ndarray) -> np.ndarray:
    """Rows ``filter * 16 + channel`` (the demo) to ``channel * 3 + filter`` (TF, nca_lab)."""
    return weight.reshape(3, CHANNELS, -1).transpose(1, 0, 2).reshape(PERCEPTION, -1)


def tf_to_filter_major(weight: np.ndarray) -> np.ndarray:
    """Rows ``channel * 3 + filter`` to ``filter * 16 + channel``; inverse of :func:`filter_major_to_tf`."""
    return weight.reshape(CHANNELS, 3, -1).transpose(1, 0, 2).reshape(PERCEPTION, -1)


def read_webgl8(document, source: str) -> NCA:
    """The :class:`NCA` of a parsed webgl8 document; ``source`` names the file in errors.

    Raises:
        ConfigError: a layer is missing, has the wrong sizes, another type than uint8, a bad
            scale or a payload that is not ``(in_ch + 1) * out_ch`` bytes of base64.
    """
    require(isinstance(document, list), f"{source}: a webgl8 model is a JSON list of layers")
    require(
        len(document) == len(LAYER_SIZES),
        f"{source}: a webgl8 model is a list of {len(LAYER_SIZES)} layers, this one has {len(document)}",
    )
    (w1, b1), (w2, b2) = (
        _decode_layer(layer, f"{source}: layer {number}", sizes)
        for number, (layer, sizes) in enumerate(zip(document, LAYER_SIZES, strict=True), start=1)
    )
    return original_nca(filter_major_to_tf(w1), b1, w2, b2)


def to_webgl8(model: NCA, source: str = "the model") -> list[dict]:
    """The webgl8 document of ``model``, quantised as the authors' ``pack_layer`` does.

    The step size is folded into the last layer (the demo has none). The fire rate and the
    rotation angle are not stored: the demo runs fire rate 0.5 and has its own angle control.

    Raises:
        ConfigError: ``model`` is not the architecture the demo runs (Sobel perception of 16
            channels, one hidden layer of 128, alive threshold 0.1) or has non-finite weights.
    """
    perceive, update = model.perceive, model.update
    require(
        type(perceive) is SobelPerceive and perceive.num_channels == CHANNELS,
        f"{source}: the web demo runs a Sobel perception of {CHANNELS} channels; this model has "
        f"{type(perceive).__name__} of {perceive.num_channels} channels",
    )
    require(
        type(update) is ResidualUpdate,
        f"{source}: the web demo runs the residual update; this model has {type(update).__name__}",
    )
    require(
        [layer.out_features for layer in update.hidden] == [HIDDEN],
        f"{source}: the web demo runs one hidden layer of {HIDDEN}; this model has "
        f"{[layer.out_features for layer in update.hidden]}",
    )
    require(
        model.alive_threshold is not None and np.float32(model.alive_threshold) == np.float32(ALIVE_THRESHOLD),
        f"{source}: the web demo masks cells at alpha {ALIVE_THRESHOLD}; this model "
        + ("has no alive masking" if model.alive_threshold is None else f"uses {model.alive_threshold}"),
    )
    require(
        not model.fixed_channels,
        f"{source}: the web demo updates every channel; this model holds {model.fixed_channels} fixed (its input)",
    )
    hidden, out = update.hidden[0], update.out
    w1, b1 = np.asarray(hidden.kernel[...], np.float32), np.asarray(hidden.bias[...], np.float32)
    step = np.float32(update.step_size)
    w2, b2 = np.asarray(out.kernel[...], np.float32) * step, np.asarray(out.bias[...], np.float32) * step
    parts = (w1, b1, w2, b2)
    require(all(np.isfinite(v).all() for v in parts), f"{source}: the model's weights are not finite")
    require(  # else the scale is inf: the file is JSON with Infinity, which the demo's JSON.parse refuses
        all(np.abs(v).max() <= np.finfo(np.float32).max / 2 for v in parts),
        f"{source}: weights too large for the format (each layer's scale, 2 max|w|, is a float32)",
    )
    return [_pack(tf_to_filter_major(w1), b1), _pack(w2, b2)]


def _quantise(values: np.ndarray) -> tuple[np.ndarray, float]:
    """``(bytes, scale)`` with ``scale = 2 * max|v|`` and ``byte = round((v / scale + 0.5) * 255)``.

    Computed in float32 like the authors' exporter. All-zero values (an untrained last
    layer) get scale 0 and byte 128, which reads back as exactly 0.
    """
    scale = np.float32(2.0) * np.abs(values).max()
    if scale == 0:
        return np.full(values.shape, 128, np.uint8), 0.0
    return np.round((values / scale + np.float32(0.5)) * np.float32(255)).astype(np.uint8), float(scale)


def _pack(weight: np.ndarray, bias: np.ndarray) -> dict:
    """One layer object: quantised weight rows and bias row, in ``pack_layer``'s field order."""
    in_ch, out_ch = weight.shape
    weight_bytes, weight_scale = _quantise(weight)
    bias_bytes, bias_scale = _quantise(bias)
    packed = np.vstack([weight_bytes, bias_bytes[None]])
    return {
        "data_b64": base64.b64encode(packed.tobytes()).decode("ascii"),
        "in_ch": int(in_ch),
        "out_ch": int(out_ch),
        "weight_scale": weight_scale,
        "bias_scale": bias_scale,
        "type": "uint8",
    }


def _decode_layer(layer, where: str, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Dequantised ``(weight (in_ch, out_ch), bias (out_ch,))`` of one layer object."""
    require(isinstance(layer, dict), f"{where}: not an object")
    missing = [field for field in FIELDS if field not in layer]
    require(not missing, f"{where}: missing {', '.join(missing)}")
    require(layer["type"] == "uint8", f"{where}: type {layer['type']!r} is not supported (only 'uint8')")
    in_ch, out_ch = sizes
    require(
        (layer["in_ch"], layer["out_ch"]) == sizes,
        f"{where} is {layer['in_ch']} -> {layer['out_ch']}, expected {in_ch} -> {out_ch}",
    )
    scales = []
    for field in ("weight_scale", "bias_scale"):
        value = layer[field]
        require(  # false for nan; past float32's largest, a float32 is inf
            is_number(value) and 0 <= value <= float(np.finfo(np.float32).max),
            f"{where}: {field} must be a finite float32 >= 0, got {value!r}",
        )
        scales.append(np.float32(value))
    payload = _base64_bytes(layer["data_b64"], where)
    expected = (in_ch + 1) * out_ch
    require(
        payload.size == expected,
        f"{where}: data_b64 holds {payload.size} bytes, expected (in_ch + 1) * out_ch = {expected} (truncated?)",
    )
    unit = payload.reshape(in_ch + 1, out_ch).astype(np.float32) / np.float32(255) - np.float32(0.5)
    return unit[:-1] * scales[0], unit[-1] * scales[1]


def _base64_bytes(text, where: str) -> np.ndarray:
    """The bytes of a base64 string as uint8; errors name ``where``."""
    require(isinstance(text, str), f"{where}: data_b64 must be a base64 string")
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), np.uint8)
    except (binascii.Error, ValueError) as err:
        raise ConfigError(f"{where}: data_b64 is not valid base64 (truncated?)") from err
