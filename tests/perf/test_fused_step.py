"""The fused Pallas step equals the XLA path: ``NCA(kernel="pallas")`` against ``kernel="xla"``
with the same weights and the same random draws, run here by Pallas' interpreter (the GPU
compiles the same kernels; experiments/gpu/fused_check.py compares them there). States,
frames and gradients must agree to float32 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.kernels.fused_rollout import fused_rollout, packed_weights
from nca_lab.kernels.sobel_mlp_backward import backward_step, weight_partials
from nca_lab.kernels.sobel_mlp_step import FlatLayout, Launch, forward_step, pack_weights
from nca_lab.log.metrics_file import read_metrics
from nca_lab.nca import NCA
from nca_lab.perceive.learned import LearnedPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.step_vjp import residual_step
from nca_lab.train.run import build
from nca_lab.update.residual import ResidualUpdate

from nca_testing import TINY, assert_close, assert_gradients_agree, assert_rollouts_agree, rollout_value_and_grads

C, HIDDEN = 16, 16


def update(hidden=(HIDDEN,), channels=C):
    return ResidualUpdate(3 * channels, channels, hidden_sizes=hidden, step_size=0.7, zero_init=False, rngs=nnx.Rngs(1))


def state(batch=2, height=7, width=9):
    """Random cells, about half of them dead (alpha below the threshold) so both masks matter."""
    x = jax.random.uniform(jax.random.key(0), (batch, height, width, C))
    return x * (jax.random.uniform(jax.random.key(1), (batch, height, width, 1)) > 0.5)


def test_flat_layout_round_trip_and_neighbour_offsets():
    layout = FlatLayout(5, 6, block=8)
    x = jax.random.normal(jax.random.key(2), (3, 5, 6, 2))
    flat = layout.to_flat(x)
    assert flat.shape == (3, layout.length, 2) and layout.num_blocks * layout.block >= 7 * 8
    np.testing.assert_array_equal(layout.from_flat(flat), x)
    centre = layout.margin + 2 * layout.row + 3  # padded (2, 3) = grid cell (1, 2)
    for (dr, dc), offset in zip([(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)], layout.offsets(), strict=True):
        np.testing.assert_array_equal(flat[:, centre + offset], x[:, 1 + dr, 2 + dc])


def fire_mask(x, seed=3):
    return (jax.random.uniform(jax.random.key(seed), (*x.shape[:-1], 1)) < 0.5).astype(jnp.float32)


def one_step(upd, alive_threshold, layout):
    """One fused step of a grid state for a given fire mask: a rollout of length 1."""
    rollout = fused_rollout(layout, angle=0.4, step_size=upd.step_size, alive_threshold=alive_threshold, interpret=True)

    def step(params, x, fire):
        packed = packed_weights(nnx.merge(graph, params, rest))
        flat = rollout(packed, layout.to_flat(x), layout.to_flat(fire)[None, ..., 0], jnp.int32(1))
        return layout.from_flat(flat)

    graph, params, rest = nnx.split(upd, nnx.Param, ...)
    return step, params


@pytest.mark.parametrize("alive_threshold", [0.1, None], ids=["alive", "no_alive"])
def test_one_step_equals_the_xla_step(alive_threshold):
    perceive, upd, x = SobelPerceive(C, angle=0.4), update(), state()
    fire = fire_mask(x)
    want = residual_step(perceive, upd, alive_threshold, x, fire)
    step, params = one_step(upd, alive_threshold, FlatLayout(7, 9, block=16))
    assert_close(step(params, x, fire), want)
    assert float(jnp.abs(want - x).max()) > 0.01  # the step changed the state
    if alive_threshold is not None:
        assert bool((want == 0).all(axis=-1).any())  # and some cells died


@pytest.mark.parametrize("alive_threshold", [0.1, None], ids=["alive", "no_alive"])
def test_one_step_gradients_equal_the_xla_step(alive_threshold):
    """Every parameter's and the state's cotangent, rotated Sobel taps (all 8 neighbours weigh in)."""
    perceive, upd, x = SobelPerceive(C, angle=0.4), update(), state()
    fire = fire_mask(x)
    grad_out = jax.random.normal(jax.random.key(6), x.shape)
    step, params = one_step(upd, alive_threshold, FlatLayout(7, 9, block=16))
    graph, _, rest = nnx.split(upd, nnx.Param, ...)

    def reference(params, x):
        return residual_step(perceive, nnx.merge(graph, params, rest), alive_threshold, x, fire)

    want = jax.vjp(reference, params, x)[1](grad_out)
    got = jax.vjp(lambda p, x: step(p, x, fire), params, x)[1](grad_out)
    assert_gradients_agree(got, want)


def test_every_launch_computes_the_same_step_and_gradients():
    """Programs of fewer cells than the layout's block cover the same cells, and a hidden layer
    taken in chunks of columns is the same layer: the forward step, the state's cotangent and
    the weight gradients (summed over more partials) agree."""
    upd, x = update(hidden=(32,)), state()
    layout = FlatLayout(7, 9, block=16)
    flat = layout.to_flat(x)
    states = jnp.zeros((2, *flat.shape)).at[0].set(flat)
    alive = jnp.zeros((1, *flat.shape[:2]))
    fire = layout.to_flat(fire_mask(x))[None, ..., 0]
    packed = packed_weights(upd)
    grad_out = jax.random.normal(jax.random.key(6), flat.shape)
    common = {"angle": 0.4, "step_size": 0.7, "interpret": True}

    def run(launch):
        step = jnp.int32(0)
        out, alive_out = forward_step(
            states, alive, fire, packed, step, 1, layout, history=True, alive_threshold=0.1, launch=launch, **common
        )
        partials = weight_partials(x.shape[0], layout, packed, launch)
        partials, grad = backward_step(
            out, fire, alive_out, grad_out, partials, packed, step, 1, layout, launch=launch, **common
        )
        return layout.from_flat(out[1]), layout.from_flat(grad), partials.sum(axis=(0, 1))

    want = run(None)
    assert len(Launch().hidden_columns(32)) == 1 and len(Launch(hidden_chunk=16).hidden_columns(32)) == 2
    for launch in (
        Launch(cells=4, warps=2),
        Launch(cells=8, warps=4, hidden_chunk=16),
        Launch(cells=16, hidden_chunk=16),
        Launch(cells=8, hidden_chunk=16, chunk_loop=True),
    ):
        got = run(launch)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])
        assert_close(got[2], want[2])
    assert bool((want[2] != 0).any(axis=1).all())  # every row of the packed weights got a gradient


def test_partials_of_another_launch_are_refused():
    layout, upd = FlatLayout(7, 9, block=16), update()
    packed = packed_weights(upd)
    flat = jnp.zeros((1, layout.length, C))
    states, fire = jnp.stack([flat, flat]), jnp.zeros((1, 1, layout.length))
    partials = weight_partials(1, layout, packed, Launch(cells=8))
    with pytest.raises(ValueError, match="this launch needs weight_partials"):
        backward_step(states, fire, None, flat, partials, packed, 0, 1, layout, angle=0.0, step_size=1.0)


def test_packed_weights_lay_out_each_parameter():
    """The kernels read the rows of :func:`pack_weights` by position: each parameter's entries
    are where the docstring says, and b2's row is zero past its C entries."""
    upd = ResidualUpdate(3 * C, C, hidden_sizes=[32], zero_init=False, rngs=nnx.Rngs(1))
    params = {"w1": upd.hidden[0].kernel[...], "b1": upd.hidden[0].bias[...]}
    params |= {"w2": upd.out.kernel[...], "b2": upd.out.bias[...] + 1.0}
    packed = pack_weights(params)
    assert packed.shape == (4 * C + 2, 32)
    for feature in range(3):  # identity, grad_x, grad_y
        np.testing.assert_array_equal(packed[feature * C : (feature + 1) * C], params["w1"][feature::3])
    np.testing.assert_array_equal(packed[3 * C : 4 * C], params["w2"].T)
    np.testing.assert_array_equal(packed[4 * C], params["b1"])
    np.testing.assert_array_equal(packed[4 * C + 1, :C], params["b2"])
    assert not bool(packed[4 * C + 1, C:].any())


@pytest.mark.parametrize("cells", [12, 32])
def test_a_launch_that_does_not_divide_the_layout_is_refused(cells):
    with pytest.raises(ValueError, match="power of two dividing 16"):
        Launch(cells=cells).programs(FlatLayout(7, 9, block=16))


@pytest.mark.parametrize("unroll", [1, 3], ids=["loop", "unrolled"])
def test_rollout_and_gradients_equal_the_xla_path(unroll):
    """A drawn length (3 of 4 steps); unrolled by 3, the loops run a partial last iteration."""
    perceive, upd = SobelPerceive(C), update()
    fused = NCA(perceive, upd, kernel="pallas")
    reference = NCA(perceive, upd, kernel="xla")
    assert fused.uses_fused_kernel and not reference.uses_fused_kernel
    x, keys = state(), jax.random.split(jax.random.key(4), 2)
    got = rollout_value_and_grads(fused, x, keys, 4, active_steps=jnp.int32(3), unroll=unroll)
    want = rollout_value_and_grads(reference, x, keys, 4, active_steps=jnp.int32(3))
    assert_rollouts_agree(got, want)


def test_steps_past_the_drawn_length_do_nothing_forward_and_backward():
    """A rollout of ``count`` steps out of ``T`` is the first ``count`` steps; ``count=0`` the
    identity, with the identity as the state's gradient and no gradient for the weights."""
    upd, x = update(), state()
    layout = FlatLayout(7, 9, block=16)
    fire = jnp.stack([layout.to_flat(fire_mask(x, seed))[..., 0] for seed in (3, 4, 5)])
    rollout = fused_rollout(layout, angle=0.0, step_size=0.7, alive_threshold=0.1, interpret=True)
    packed, flat = packed_weights(upd), layout.to_flat(x)
    grid = layout.from_flat
    assert_close(grid(rollout(packed, flat, fire, jnp.int32(2))), grid(rollout(packed, flat, fire[:2], jnp.int32(2))))
    np.testing.assert_array_equal(grid(rollout(packed, flat, fire, jnp.int32(0))), x)
    value, vjp = jax.vjp(lambda p, f: rollout(p, f, fire, jnp.int32(0)), packed, flat)
    grad_packed, grad_flat = vjp(flat)
    np.testing.assert_array_equal(grid(grad_flat), x)
    assert not bool(grad_packed.any())


def test_frames_with_a_drawn_length_equal_the_xla_path():
    """Frames are rolled out in chunks, each of which runs the part of the drawn length that falls in it."""
    perceive, upd = SobelPerceive(C), update()
    x, keys = state(batch=1), jax.random.split(jax.random.key(5), 1)
    frames = {
        kernel: NCA(perceive, upd, kernel=kernel).rollout(x, keys, 4, frame_every=2, active_steps=jnp.int32(3))
        for kernel in ("pallas", "xla")
    }
    assert_close(frames["pallas"][1], frames["xla"][1])
    assert float(jnp.abs(frames["pallas"][1][-1] - frames["pallas"][1][-2]).max()) > 0.01  # step 3 ran
    np.testing.assert_array_equal(frames["pallas"][1][-1], frames["pallas"][0])


def test_frames_without_alive_mask_equal_the_xla_path():
    perceive, upd = SobelPerceive(C), update()
    x, keys = state(batch=1), jax.random.split(jax.random.key(5), 1)
    frames = {
        kernel: NCA(perceive, upd, alive_threshold=None, kernel=kernel).rollout(x, keys, 4, frame_every=2)
        for kernel in ("pallas", "xla")
    }
    assert frames["pallas"][1].shape == (3, 1, 7, 9, C)
    assert_close(frames["pallas"][0], frames["xla"][0])
    assert_close(frames["pallas"][1], frames["xla"][1])


@pytest.mark.parametrize(
    ("perceive", "upd", "threshold", "missing"),
    [
        (
            lambda: LearnedPerceive(C, rngs=nnx.Rngs(0)),
            lambda: update(),
            0.1,
            "the sobel perceive, not LearnedPerceive",
        ),
        (lambda: SobelPerceive(C), lambda: update(hidden=(16, 16)), 0.1, "one hidden layer, not 2"),
        (lambda: SobelPerceive(12), lambda: update(channels=12), 0.1, "hidden at least channels, not 12 and 16"),
        (lambda: SobelPerceive(C), lambda: update(hidden=(24,)), 0.1, "hidden at least channels, not 16 and 24"),
        (lambda: SobelPerceive(C), lambda: update(), -0.5, "alive threshold of at least 0 .or none., not -0.5"),
    ],
    ids=["learned", "two_hidden", "channels_12", "hidden_24", "negative_threshold"],
)
def test_pallas_refuses_what_the_kernels_do_not_compute(perceive, upd, threshold, missing):
    """Naming what this model lacks (the line listed every condition)."""
    with pytest.raises(ConfigError, match=f"^kernel=pallas needs .*{missing}$"):
        NCA(perceive(), upd(), alive_threshold=threshold, kernel="pallas")


def test_unknown_kernel_is_refused():
    with pytest.raises(ConfigError, match="kernel must be xla or pallas"):
        NCA(SobelPerceive(C), update(), kernel="cuda")


def test_a_training_run_with_the_fused_kernels_logs_what_the_xla_path_logs(tmp_path):
    """The whole app with ``kernel=pallas``: the trainer's drawn rollout lengths, the sample
    pool and its damage, evaluation at several horizons, the rendered rollout."""
    overrides = [*TINY, "task=regenerating", "task.pool_size=8", "task.damage_n=1", "trainer.batch_size=4"]
    overrides += ["trainer.steps=3", "trainer.log_every=1", "trainer.rollout_steps=[2,4]"]
    runs = {}
    for kernel in ("xla", "pallas"):
        task, model, trainer = build(compose(*overrides, f"kernel={kernel}"))
        assert model.uses_fused_kernel == (kernel == "pallas")
        summary = trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path / kernel)
        losses = [r["loss"] for r in read_metrics(tmp_path / kernel) if "loss" in r]
        runs[kernel] = (summary, losses, nnx.state(model, nnx.Param))
    (summary, losses, params), (want_summary, want_losses, want_params) = runs["pallas"], runs["xla"]
    assert len(losses) == 3 and summary.keys() == want_summary.keys()
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for name, value in want_summary.items():
        np.testing.assert_allclose(summary[name], value, rtol=1e-5, err_msg=name)
    # Adam divides by the root of each gradient's second moment, so the float32 rounding of
    # tiny gradients shows in their weights (here 7e-9 on 1e-4): relative 1e-4, absolute 1e-5 of the largest.
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-4), params, want_params)
    assert (tmp_path / "pallas" / "final.png").exists() and (tmp_path / "pallas" / "rollout.gif").exists()
