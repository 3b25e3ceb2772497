"""The sparse CPU path equals the dense one: the MLP run on active cells only
(``NCA(compact_cells=True)``, :mod:`nca_lab.active_cells`) against every cell
(``compact_cells=False``), same weights and random draws. States, losses and gradients must
agree to float32 rounding, whether the active cells take one chunk or several."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.active_cells import CHUNK_CELLS, MIN_CELLS, near_alive, on_cells
from nca_lab.alive import alive_mask
from nca_lab.errors import ConfigError
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.step_vjp import residual_step
from nca_lab.update.residual import ResidualUpdate

from nca_testing import assert_rollouts_agree, rollout_value_and_grads

C = 8


@pytest.mark.parametrize("density", [0.0, 0.05, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("chunk", [64, 80, 1000])  # 400 cells: a partial last chunk, whole chunks, one
def test_on_cells_equals_the_dense_function_in_chunks(density, chunk):
    n, k = 400, 3
    active = jax.random.uniform(jax.random.key(0), (n,)) < density
    rows = jax.random.normal(jax.random.key(1), (n, k))
    weights = jax.random.normal(jax.random.key(2), (k, 5))

    def fn(x):  # a row output, and a sum over rows that vanishes for zero rows
        return (jnp.tanh(x @ weights),), jnp.sum(x**2, axis=0)

    (out,), total = on_cells(active, fn, [rows], chunk=chunk)
    (dense,), _ = fn(rows)
    np.testing.assert_allclose(out, jnp.where(active[:, None], dense, 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, jnp.sum(jnp.where(active[:, None], rows, 0.0) ** 2, axis=0), rtol=1e-5)


def test_near_alive_is_the_dilated_alive_mask():
    x = jnp.zeros((1, 9, 9, 4)).at[0, 4, 4, 3].set(1.0)  # one alive cell: alive 3x3, near-alive 5x5
    assert int(alive_mask(x, 0.1).sum()) == 9
    near = near_alive(alive_mask(x, 0.1))[0, ..., 0]
    assert int(near.sum()) == 25 and bool(near[2:7, 2:7].all())


def models(alive_threshold=0.1, fire_rate=0.5):
    perceive = SobelPerceive(C)
    update = ResidualUpdate(
        perceive.out_features, C, hidden_sizes=(16,), fire_rate=fire_rate, zero_init=False, rngs=nnx.Rngs(1)
    )
    return [NCA(perceive, update, alive_threshold=alive_threshold, compact_cells=flag) for flag in (True, False)]


def body(batch=2, grid=16, radius=3):
    """A square living body of side ``2 * radius`` with random cells; dead cells elsewhere."""
    x = jax.random.uniform(jax.random.key(3), (batch, grid, grid, C))
    inside = jnp.abs(jnp.arange(grid) - grid // 2 + 0.5) < radius
    return x * (inside[:, None] & inside[None, :])[None, :, :, None]


@pytest.mark.parametrize(
    ("alive_threshold", "radius", "fire_rate", "grid"),
    [(0.1, 3, 0.5, 16), (0.1, 6, 0.5, 16), (None, 8, 0.5, 16), (None, 8, 1.0, 24)],
    ids=["small_body", "large_body", "no_alive_mask", "all_fire_in_two_chunks"],
)
def test_rollout_and_gradients_equal_the_dense_path(alive_threshold, radius, fire_rate, grid):
    compact, dense = models(alive_threshold, fire_rate)
    assert compact.compacts(16) and not dense.compacts(10**6)
    state, keys = body(grid=grid, radius=radius), jax.random.split(jax.random.key(4), 2)
    assert fire_rate < 1 or state[..., 0].size > CHUNK_CELLS  # all cells fire: more than one chunk
    want = rollout_value_and_grads(dense, state, keys, 6)
    assert_rollouts_agree(rollout_value_and_grads(compact, state, keys, 6), want, rtol=2e-5)
    if alive_threshold is not None:  # the alive mask did zero cells the compact path skipped
        assert bool((want[1] == 0).all(axis=-1).any())


def test_auto_is_on_for_large_cpu_steps_only():
    model = NCA(SobelPerceive(C), ResidualUpdate(3 * C, C, rngs=nnx.Rngs(0)))
    assert model.compact_cells == "auto" and jax.default_backend() == "cpu"
    assert model.compacts(MIN_CELLS) and not model.compacts(MIN_CELLS - 1)
    reference = NCA(SobelPerceive(C), ResidualUpdate(3 * C, C, rngs=nnx.Rngs(0)), manual_vjp=False)
    assert not reference.compacts(MIN_CELLS)  # autodiff, the reference path, is always dense


@pytest.mark.parametrize("setting", ["sometimes", 0, 1])  # 0 and 1 passed as False and True, and acted as auto
def test_bad_setting_is_refused(setting):
    with pytest.raises(ConfigError, match="compact_cells must be auto, true or false"):
        NCA(SobelPerceive(C), ResidualUpdate(3 * C, C, rngs=nnx.Rngs(0)), compact_cells=setting)


def test_a_dead_cell_next_to_a_living_one_is_updated_as_it_keeps_that_one_alive():
    """Why the active cells are the near-alive ones, not the alive ones: in a row ``. k j i .``
    where only ``k`` is alive-ish (alpha 0.5), ``k`` and the dead ``i`` fire, and the update
    sets alpha to ``0.5 - 2 * alpha``. ``k`` dies and ``i`` gains alpha 0.5; ``i`` is still
    masked (it was dead before), but it keeps ``j`` (alive before) alive after, with its hidden
    0.3. Skipping ``i``'s update would zero ``j``."""
    channels = 5
    perceive = SobelPerceive(channels)
    update = ResidualUpdate(perceive.out_features, channels, hidden_sizes=(2,), zero_init=False, rngs=nnx.Rngs(0))
    alpha_feature = 3 * 3  # channel 3's identity filter (features ordered channel * 3 + filter)
    update.hidden[0].kernel[...] = jnp.zeros_like(update.hidden[0].kernel[...]).at[alpha_feature, 0].set(1.0)
    update.hidden[0].bias[...] = jnp.array([0.0, 1.0])  # relu(alpha), 1
    update.out.kernel[...] = jnp.zeros_like(update.out.kernel[...]).at[0, 3].set(-2.0).at[1, 3].set(0.5)
    update.out.bias[...] = jnp.zeros_like(update.out.bias[...])
    k, j, i = 1, 2, 3
    state = jnp.zeros((1, 1, 7, channels)).at[0, 0, k, 3].set(0.5).at[0, 0, j, 4].set(0.3)
    fire = jnp.zeros((1, 1, 7, 1)).at[0, 0, k].set(1.0).at[0, 0, i].set(1.0)
    dense, compact = (residual_step(perceive, update, 0.1, state, fire, compact=flag) for flag in (False, True))
    np.testing.assert_array_equal(dense, state.at[0, 0, k, 3].set(0.0))  # j alone lives on, as it was
    np.testing.assert_array_equal(compact, dense)
