import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.errors import ConfigError
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.tasks.base import Batch
from nca_lab.tasks.growing import seed_state
from nca_lab.update.residual import ResidualUpdate

from nca_testing import assert_close

C = 8


@pytest.fixture(scope="module")
def model():
    """A model whose last layer is random, so rollouts change the state."""
    update = ResidualUpdate(3 * C, C, hidden_sizes=[16], zero_init=False, rngs=nnx.Rngs(0))
    return NCA(SobelPerceive(C), update)


@pytest.fixture(scope="module")
def seeds():
    return jnp.broadcast_to(jnp.asarray(seed_state((10, 10), C)), (3, 10, 10, C))


def test_rollout_shapes_dtypes_finite(model, seeds):
    keys = jax.random.split(jax.random.key(0), 3)
    final, frames = jax.jit(lambda s, k: model.rollout(s, k, 6, frame_every=2))(seeds, keys)
    assert final.shape == seeds.shape and final.dtype == jnp.float32
    assert frames.shape == (4, 3, 10, 10, C)
    assert bool(jnp.all(jnp.isfinite(frames)))
    np.testing.assert_array_equal(frames[0], seeds)
    np.testing.assert_array_equal(frames[-1], final)
    assert not np.allclose(final, seeds)


def test_frame_fn_keeps_what_it_makes_of_each_frame(model, seeds):
    from nca_lab.nca import grow
    from nca_lab.render import rgba

    keys = jax.random.split(jax.random.key(0), 3)
    final, frames = model.rollout(seeds, keys, 6, frame_every=2)
    kept_final, kept = grow(model, seeds, keys, 6, frame_every=2, frame_fn=rgba)
    assert kept.shape == (4, 3, 10, 10, 4)
    np.testing.assert_allclose(kept, frames[..., :4], atol=1e-6)
    np.testing.assert_allclose(kept_final, final, atol=1e-6)


def test_rollout_without_frames_matches(model, seeds):
    keys = jax.random.split(jax.random.key(0), 3)
    final, frames = model.rollout(seeds, keys, 6)
    assert frames is None
    np.testing.assert_allclose(final, model.rollout(seeds, keys, 6, frame_every=3)[0], atol=1e-6)


def test_active_steps_runs_only_the_first_steps(model, seeds):
    keys = jax.random.split(jax.random.key(1), 3)
    skipped, _ = jax.jit(lambda s, k, n: model.rollout(s, k, 9, active_steps=n))(seeds, keys, jnp.int32(6))
    step_keys = jax.vmap(lambda k: jax.random.split(k, 9))(keys)  # the keys a 9-step rollout uses
    state = seeds
    for t in range(6):
        state = model.step(state, step_keys[:, t])
    np.testing.assert_allclose(skipped, state, atol=1e-6)
    assert not np.allclose(state, model.step(state, step_keys[:, 6]))  # a 7th step would have changed it


def test_steps_that_always_run_skip_no_cond_and_change_nothing(model, seeds):
    """``min_active_steps``: the first steps of a drawn length run without a ``lax.cond`` each
    (XLA:GPU may sync the host on each); the same rollout and gradients as with a cond on all."""
    keys = jax.random.split(jax.random.key(3), 3)

    def loss(m, n, least):
        final, _ = m.rollout(seeds, keys, 7, active_steps=n, min_active_steps=least)
        return jnp.mean(final[..., :4] ** 2), final

    def conds_per_scan(least):
        jaxpr = jax.make_jaxpr(lambda n: model.rollout(seeds, keys, 7, active_steps=n, min_active_steps=least))
        scans = [e for e in jaxpr(jnp.int32(5)).jaxpr.eqns if e.primitive.name == "scan"]
        return [(e.params["length"], "cond" in str(e.params["jaxpr"])) for e in scans]

    assert conds_per_scan(0) == [(7, True)]
    assert conds_per_scan(4) == [(4, False), (3, True)]
    assert conds_per_scan(7) == [(7, False)]
    for n in (4, 6):
        (want, want_final), want_grads = nnx.value_and_grad(loss, has_aux=True)(model, jnp.int32(n), 0)
        (got, got_final), got_grads = nnx.value_and_grad(loss, has_aux=True)(model, jnp.int32(n), 4)
        np.testing.assert_array_equal(got_final, want_final)
        jax.tree.map(assert_close, got_grads, want_grads)  # summed over steps in two scans: rounding


def test_remat_and_unroll_do_not_change_results_or_gradients(model, seeds):
    keys = jax.random.split(jax.random.key(2), 3)

    def loss(m, remat, unroll):
        final, _ = m.rollout(seeds, keys, 4, remat=remat, unroll=unroll)
        return jnp.mean(final[..., :4] ** 2)

    plain, g_plain = nnx.value_and_grad(loss)(model, False, 1)
    fast, g_fast = nnx.value_and_grad(loss)(model, True, 2)
    np.testing.assert_allclose(plain, fast, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g_plain, g_fast)
    norms = [float(jnp.abs(leaf).sum()) for leaf in jax.tree.leaves(g_plain)]
    assert all(n > 0 for n in norms)


def test_a_sample_does_not_depend_on_its_batch(model, seeds):
    keys = jax.random.split(jax.random.key(3), 3)
    batched, _ = model.rollout(seeds, keys, 5)
    alone, _ = model.rollout(seeds[1], keys[1], 5)
    np.testing.assert_allclose(batched[1], alone, atol=1e-5)


def test_alive_masking_zeroes_dead_cells(model):
    state = jnp.zeros((10, 10, C)).at[2, 2, 3:].set(1.0).at[8, 8, :].set(0.05)
    out = model.step(state, jax.random.key(0))
    far = np.ones((10, 10), bool)
    far[1:4, 1:4] = False
    np.testing.assert_array_equal(np.asarray(out)[far], 0.0)  # incl. the cell with alpha 0.05


def test_no_alive_masking_keeps_every_cell():
    update = ResidualUpdate(3 * C, C, zero_init=False, fire_rate=1.0, rngs=nnx.Rngs(0))
    model = NCA(SobelPerceive(C), update, alive_threshold=None)
    state = jax.random.uniform(jax.random.key(1), (6, 6, C)).at[..., 3].set(0.0)  # alpha 0 everywhere
    out = model.step(state, jax.random.key(0))
    assert bool(jnp.all(jnp.any(out != state, axis=-1)))


def test_a_classic_prng_key_draws_as_its_new_style_key(model, seeds):
    final, _ = jax.jit(lambda s, k: model.rollout(s, k, 4))(seeds[0], jax.random.PRNGKey(5))
    np.testing.assert_array_equal(final, model.rollout(seeds[0], jax.random.key(5), 4)[0])


@pytest.mark.parametrize("method", ["rollout", "step"])
@pytest.mark.parametrize(
    ("state", "key", "error", "message"),
    [
        (lambda s: s, lambda: jax.random.key(0), ValueError, r"one key per grid, shape \(3,\)"),
        (lambda s: s[..., :4], lambda: jax.random.split(jax.random.key(0), 3), ValueError, r"\(\.\.\., H, W, 8\)"),
        (lambda s: s.astype(jnp.bfloat16), lambda: jax.random.split(jax.random.key(0), 3), TypeError, "steps float32"),
        (lambda s: s[0], lambda: jnp.zeros(2, jnp.int32), TypeError, r"jax\.random\.key"),
        (lambda s: s[0], lambda: np.uint32(0), TypeError, r"key has dtype uint32, shape \(\); give jax\.random\.key"),
        (
            lambda s: Batch(s, s),
            lambda: jax.random.split(jax.random.key(0), 3),
            TypeError,
            r"its \.state\), got a Batch",
        ),
        (
            lambda s: s,
            lambda: None,
            TypeError,
            r"^key must be jax\.random\.key\(seed\) keys, one per grid, got NoneType",
        ),
    ],
    ids=["one key for a batch", "channels", "bf16", "int key", "uint32 scalar", "a task's batch", "no key"],
)
def test_bad_state_or_key_is_named_at_trace_time(model, seeds, method, state, key, error, message):
    run = model.step if method == "step" else lambda s, k: model.rollout(s, k, 2)
    with pytest.raises(error, match=message):
        jax.jit(run)(state(seeds), key())


@pytest.mark.parametrize("num_steps", [-3, 2.0, "jit"], ids=["negative", "float", "traced"])
def test_a_bad_number_of_steps_is_one_line(model, seeds, num_steps):
    """They were a reshape's error deep in JAX, or an unhashable tracer's."""
    keys = jax.random.split(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"num_steps must be a Python int >= 0 \(static: the scan's length\)"):
        if num_steps == "jit":
            jax.jit(lambda s, k, n: model.rollout(s, k, n))(seeds, keys, 2)
        else:
            model.rollout(seeds, keys, num_steps)


def test_a_negative_least_number_of_active_steps_is_refused(model, seeds):
    """``keys[:-1]``: all but the last step ran unconditionally, past ``active_steps``."""
    keys = jax.random.split(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"min_active_steps must be a Python int >= 0, got -1"):
        model.rollout(seeds, keys, 2, active_steps=0, min_active_steps=-1)


def test_a_hand_built_update_of_the_wrong_size_is_one_line():
    """It was a dot_general error 13 frames deep in flax, at the first step."""
    with pytest.raises(
        ConfigError, match=r"sized for perceptions of 32 features and 16 channels; the perceive gives 48"
    ):
        NCA(SobelPerceive(16), ResidualUpdate(32, 16, rngs=nnx.Rngs(0)))
    with pytest.raises(ConfigError, match=r"and 8 channels; the perceive gives 48 features of 16 channels"):
        NCA(SobelPerceive(16), ResidualUpdate(48, 8, rngs=nnx.Rngs(0)))


def test_fixed_channels_are_perceived_and_never_changed():
    """ViTCA's input channels: every step sees them, none changes them, and the output layer's
    columns for them learn nothing (their change is dropped)."""
    perceive = SobelPerceive(C)
    update = ResidualUpdate(3 * C, C, hidden_sizes=[16], zero_init=False, rngs=nnx.Rngs(0))
    held = NCA(perceive, update, alive_threshold=None, fixed_channels=2)
    free = NCA(perceive, update, alive_threshold=None)
    state = jax.random.uniform(jax.random.key(0), (2, 10, 10, C))
    keys = jax.random.split(jax.random.key(1), 2)
    final = held.rollout(state, keys, 6)[0]
    np.testing.assert_array_equal(final[..., 6:], state[..., 6:])
    assert not np.allclose(final[..., :6], state[..., :6])
    np.testing.assert_array_equal(held.step(state, keys)[..., :6], free.step(state, keys)[..., :6])
    other_input = held.rollout(state.at[..., 6:].set(0.0), keys, 6)[0]
    assert not np.allclose(other_input[..., :6], final[..., :6])  # the input is perceived
    grads = nnx.grad(lambda m: jnp.sum(m.rollout(state, keys, 6)[0] ** 2))(held)
    out = np.asarray(grads["update"]["out"]["kernel"][...])
    assert np.all(out[:, 6:] == 0.0) and np.all(np.any(out[:, :6] != 0.0, axis=0))


def test_fewer_channels_than_rgba_are_one_line():
    """It was "fixed_channels must be an integer from 0 to -1", of a setting never given."""
    with pytest.raises(ConfigError, match=r"^the state needs at least 4 channels \(RGBA\), the perceive has 3$"):
        NCA(SobelPerceive(3), ResidualUpdate(9, 3, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("fixed", [-1, 5, 2.0, True])
def test_fixed_channels_past_rgba_only(fixed):
    update = ResidualUpdate(3 * C, C, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=rf"^fixed_channels must be an integer from 0 to 4 .*got {fixed!r}$"):
        NCA(SobelPerceive(C), update, fixed_channels=fixed)


def test_the_fused_kernels_update_every_channel():
    update = ResidualUpdate(48, 16, hidden_sizes=[32], rngs=nnx.Rngs(0))
    assert NCA(SobelPerceive(16), update, kernel="pallas").uses_fused_kernel
    with pytest.raises(ConfigError, match="^kernel=pallas needs every channel updated, not 4 fixed input channels$"):
        NCA(SobelPerceive(16), update, kernel="pallas", fixed_channels=4)
