"""Tests of the local-attention perceive, against a dense masked-attention oracle.

The oracle is nca_lab's function computed as CAX's attention NCA does: flatten the grid to
``H * W`` tokens, compute every query-key score and mask all but the 3x3 neighbourhood.
It is written here with NumPy in float64, independently of the shifted-slice code.
"""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hydra import compose, initialize_config_dir

from nca_lab.config import config_dir
from nca_lab.errors import ConfigError
from nca_lab.perceive.attention import AttentionPerceive
from nca_lab.train.run import build

C = 6


def _dense_masked(perceive: AttentionPerceive, grid: np.ndarray, zero_ring: bool = False) -> np.ndarray:
    """Dense ``(HW) x (HW)`` attention of a grid ``(H, W, C)`` whose off-grid neighbours are
    masked; with ``zero_ring``, the keys and values of the grid's outer ring are zero."""
    height, width, _ = grid.shape
    n, heads, size = height * width, perceive.num_heads, perceive.head_size
    param = lambda p: np.asarray(p[...], np.float64)  # noqa: E731
    tokens = grid.reshape(n, -1) @ param(perceive.embed.kernel) + param(perceive.embed.bias)
    normed = _layer_norm(perceive.norm, tokens)
    q, k, v = (t.reshape(n, heads, size) for t in np.split(normed @ param(perceive.qkv.kernel), 3, axis=-1))
    rel_k = param(perceive.key_offsets).reshape(9, heads, size)
    rel_v = param(perceive.value_offsets).reshape(9, heads, size)

    rows, cols = np.divmod(np.arange(n), width)
    dr, dc = rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]  # key minus query
    mask = (np.abs(dr) <= 1) & (np.abs(dc) <= 1)
    offset = np.where(mask, (dr + 1) * 3 + (dc + 1), 0)  # row-major 3x3 offset index, (N, N)

    keys, values = k + rel_k[offset], v + rel_v[offset]  # (N, N, heads, size): query i, key j
    if zero_ring:  # ViTCA's border: what the ring's cells hold is a zero key and value
        ring = (rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1)
        keys, values = (np.where(ring[None, :, None, None], 0.0, t) for t in (keys, values))
    logits = np.einsum("ihd,ijhd->hij", q, keys)
    logits = np.where(mask, logits / math.sqrt(size), -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("hij,ijhd->ihd", weights, values)
    out = tokens + attended.reshape(n, -1) @ param(perceive.out.kernel)
    if perceive.ff_hidden is not None:  # ViTCA's x + FF(LN x), exact GELU
        hidden = _layer_norm(perceive.ff_norm, out) @ param(perceive.ff_hidden.kernel) + param(perceive.ff_hidden.bias)
        gelu = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
        out = out + gelu @ param(perceive.ff_out.kernel) + param(perceive.ff_out.bias)
    return out.reshape(height, width, -1)


def _layer_norm(norm, x: np.ndarray) -> np.ndarray:
    """``norm`` (an ``nnx.LayerNorm`` or ``None``: none) of tokens ``x``: each to zero mean and
    unit variance, then scaled and shifted."""
    if norm is None:
        return x
    centred = x - x.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + norm.epsilon)
    return normed * np.asarray(norm.scale[...], np.float64) + np.asarray(norm.bias[...], np.float64)


def dense_oracle(perceive: AttentionPerceive, state: np.ndarray) -> np.ndarray:
    """The perception of one grid ``(H, W, C)`` by dense masked attention.

    With a padding value, the grid is surrounded by a ring of cells of that state, the dense
    attention runs on the larger grid, and the ring is cropped off again.
    """
    state = np.asarray(state, np.float64)
    if perceive.padding is None:
        return _dense_masked(perceive, state)
    vitca = perceive.padding == "vitca"
    ring = np.pad(state, ((1, 1), (1, 1), (0, 0)), constant_values=0.0 if vitca else perceive.padding)
    return _dense_masked(perceive, ring, zero_ring=vitca)[1:-1, 1:-1]


def _perceive(**kwargs) -> AttentionPerceive:
    return AttentionPerceive(C, **{"perception_size": 16, "num_heads": 4, **kwargs}, rngs=nnx.Rngs(params=0))


def _state(shape, seed=1) -> jnp.ndarray:
    return jax.random.normal(jax.random.key(seed), (*shape, C))


@pytest.mark.parametrize("grid", [(5, 7), (8, 8)])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("padding", [0.0, 0.5, None, "vitca"])
def test_matches_dense_masked_attention(grid, heads, padding):
    perceive = _perceive(num_heads=heads, padding=padding)
    state = _state(grid)
    np.testing.assert_allclose(perceive(state), dense_oracle(perceive, state), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", [0.0, None])
def test_layer_norm_matches_the_oracle_and_changes_the_perception(padding):
    perceive, plain = _perceive(padding=padding, layer_norm=True), _perceive(padding=padding)
    perceive.norm.scale[...] = jax.random.uniform(jax.random.key(3), (16,), minval=0.5, maxval=1.5)  # not the init's
    perceive.norm.bias[...] = jax.random.normal(jax.random.key(4), (16,)) * 0.1
    state = _state((6, 7))
    np.testing.assert_allclose(perceive(state), dense_oracle(perceive, state), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(perceive.qkv.kernel[...], plain.qkv.kernel[...])  # the seed's other weights
    assert not np.allclose(perceive(state), plain(state), atol=1e-3)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_feed_forward_matches_the_oracle_and_leaves_the_other_weights(layer_norm):
    perceive = _perceive(layer_norm=layer_norm, feed_forward=24)
    plain = _perceive(layer_norm=layer_norm)
    if layer_norm:  # not the init's identity
        perceive.ff_norm.scale[...] = jax.random.uniform(jax.random.key(5), (16,), minval=0.5, maxval=1.5)
        perceive.ff_norm.bias[...] = jax.random.normal(jax.random.key(6), (16,)) * 0.1
    perceive.ff_hidden.bias[...] = jax.random.normal(jax.random.key(7), (24,)) * 0.5  # GELU's curve, not its line
    state = _state((5, 6))
    np.testing.assert_allclose(perceive(state), dense_oracle(perceive, state), rtol=1e-5, atol=1e-5)
    for name in ("embed", "qkv", "out"):
        np.testing.assert_array_equal(getattr(perceive, name).kernel[...], getattr(plain, name).kernel[...])
    for name in ("key_offsets", "value_offsets"):
        np.testing.assert_array_equal(getattr(perceive, name)[...], getattr(plain, name)[...])
    assert not np.allclose(perceive(state), plain(state), atol=1e-3)
    assert (perceive.ff_norm is not None) == layer_norm and perceive.ff_hidden.kernel.shape == (16, 24)


def test_matches_oracle_with_separate_qkv_width_and_batch_dims():
    perceive = _perceive(perception_size=10, qkv_features=12, num_heads=3)
    states = _state((2, 3, 5, 7))
    out = perceive(states)
    assert out.shape == (2, 3, 5, 7, perceive.out_features) == (2, 3, 5, 7, 10)
    for index in np.ndindex(2, 3):
        np.testing.assert_allclose(out[index], dense_oracle(perceive, states[index]), rtol=1e-5, atol=1e-5)


def test_is_local():
    """Changing one cell changes the perception of its 3x3 neighbourhood and nothing else."""
    perceive = _perceive()
    state = _state((9, 9))
    changed = perceive(state.at[4, 6].add(1.0)) != perceive(state)
    expected = np.zeros((9, 9), bool)
    expected[3:6, 5:8] = True
    np.testing.assert_array_equal(np.any(changed, axis=-1), expected)


def _walk(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk(inner)


@pytest.mark.parametrize("padding", [0.0, None, "vitca"])
def test_builds_no_quadratic_tensor_and_no_gather(padding):
    perceive = _perceive(padding=padding)
    height = width = 40
    graphdef, params = nnx.split(perceive)
    jaxpr = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, _state((height, width)))
    eqns = list(_walk(jaxpr.jaxpr))
    assert "gather" not in {e.primitive.name for e in eqns}
    largest = max(math.prod(v.aval.shape) for e in eqns for v in e.outvars)
    # Linear in cells: the widest array is the fused q/k/v projection of the padded grid.
    assert largest <= (height + 2) * (width + 2) * 3 * perceive.num_heads * perceive.head_size
    assert largest * 10 < (height * width) ** 2  # one dense score matrix per head would be (HW)^2


def test_jit_vmap_grad():
    perceive = _perceive(padding=None)
    states = _state((2, 6, 5))
    graphdef, params = nnx.split(perceive)
    apply = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    jitted = jax.jit(apply)(params, states)
    for index in range(2):
        np.testing.assert_allclose(jitted[index], dense_oracle(perceive, states[index]), rtol=1e-5, atol=1e-5)
    vmapped = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(params, states)
    np.testing.assert_allclose(vmapped, jitted, rtol=1e-5, atol=1e-5)

    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.square(apply(p, states)))))(params)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_heads": 5}, "must divide"),
        ({"qkv_features": 30, "num_heads": 4}, "must divide"),
        ({"perception_size": 0}, "perception_size"),
        ({"num_heads": 0}, "num_heads"),
        ({"feed_forward": 0}, "perceive.feed_forward must be a positive width or null, got 0"),
        ({"padding": "zeros"}, "perceive.padding must be a number, null or vitca, got 'zeros'"),
    ],
)
def test_bad_settings_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _perceive(**kwargs)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(
            "config",
            overrides=["perceive=attention", "logger=none", "task.target_size=8", "task.padding=2", *overrides],
        )


def test_config_builds_a_model_sized_from_the_perceive():
    task, model, _ = build(_compose("perceive.perception_size=24", "perceive.num_heads=3", "perceive.feed_forward=32"))
    assert isinstance(model.perceive, AttentionPerceive)
    assert model.perceive.out_features == 24 == model.update.hidden[0].in_features
    assert model.perceive.ff_hidden.kernel.shape == (24, 32)
    assert task.num_channels == model.num_channels


def test_config_rejects_heads_not_dividing():
    with pytest.raises(ConfigError, match="must divide"):
        build(_compose("perceive.num_heads=5"))


def test_cli_smoke(tmp_path):
    """Two training steps through the real entry point, with rematerialised rollouts."""
    overrides = [
        *("perceive=attention", "logger=none", "task.target_size=8", "task.padding=2"),
        *("trainer.steps=2", "trainer.rollout_steps=[2,3]", "trainer.progress=false", "trainer.remat=true"),
    ]
    command = [sys.executable, "-m", "nca_lab", *overrides, f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: loss=" in result.stdout
    assert (tmp_path / "summary.json").is_file()
