"""The CAX side of a benchmark case, written the way CAX's own examples write it.

The systems, losses and train steps follow CAX's example notebooks at the release that runs
here (``maxencefaldor/cax`` ``examples/40_growing_nca.ipynb``, ``43_diffusing_nca.ipynb`` and
``48_attention_nca.ipynb``): a ``ComplexSystem`` subclass whose ``_step`` is CAX's
``ConvPerceive`` (depthwise identity + Sobel kernels) and ``NCAUpdate`` (alive mask, cell
dropout), rolled out by CAX's ``nnx.scan`` inside ``nnx.jit`` and vmapped over the batch
with ``nnx.split_rngs``; CAX's ``Pool``; ``optax.chain(clip_by_global_norm, adam)`` on the
update's parameters; the growing loss on a random intermediate state, as the example does.
The diffusing example, like the growing one, uses ``NCAUpdate``, so CAX's diffusing step also
masks alive cells (two 3x3 max-pools per CA step), which nca_lab's diffusing task does not:
the peer follows the example, and the table's ratio includes that difference. As in the
examples, the jitted train step does not donate the pool it updates (nca_lab's does).
Only the sizes change per case, and the target is nca_lab's bundled emoji (CAX's
``get_emoji`` downloads it). The attention peer is the example's ``ViTPerceive``:
``nnx.MultiHeadAttention`` over all ``H * W`` cells with a dense ``(HW) x (HW)``
Moore-neighbourhood mask. ``peer_remat`` cases rematerialise each step, without which CAX
does not fit in memory.

Two CAX APIs are supported, told apart by ``ComplexSystem.__call__``'s keywords:

- CAX 0.3.x (0.3.3, what pip resolves on Python 3.11): kernels take ``ndim=``; the growing
  loss collects the intermediate states with ``sow`` (``nnx.Intermediate``, popped after the
  vmapped rollout); CAX has no remat of its own, so ``peer_remat`` wraps ``_step`` in
  ``nnx.remat``, the one change to the example.
- CAX 0.4.x (0.4.4, Python >= 3.12): kernels take ``num_dims=``; ``__call__(...,
  return_states=True)`` returns ``(final_state, states)`` with the per-step states stacked
  and ``_step`` no longer sows; ``peer_remat`` sets CAX's own ``ComplexSystem.remat``, which
  wraps the scan body in ``nnx.remat``. ``Pool`` is an ``nnx.Pytree`` whose ``update``
  returns the pool it updated; it is used the same way.

Requires the ``bench`` extra (``pip install 'nca_lab[bench]'``).
"""

import inspect

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nca_lab.bench.measure import Workload
from nca_lab.bench.suites import FIRE_RATE, LEARNING_RATE, TARGET_SIZE, Case
from nca_lab.data.images import load_target
from nca_lab.errors import require

try:
    from cax.core import ComplexSystem
    from cax.core.perceive import ConvPerceive, Perceive, grad_kernel, identity_kernel
    from cax.core.update import NCAUpdate, ResidualUpdate
    from cax.nn.pool import Pool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the CAX peer needs CAX: pip install 'nca_lab[bench]' (or pip install cax)") from exc

_CALL_KEYWORDS = inspect.signature(ComplexSystem.__call__).parameters
CAX_04 = "return_states" in _CALL_KEYWORDS
"""CAX 0.4.x API (``return_states``, ``num_dims``, ``ComplexSystem.remat``); else 0.3.x (``sow``, ``ndim``)."""
if not CAX_04 and "sow" not in _CALL_KEYWORDS:  # pragma: no cover - an unknown CAX release
    raise ImportError(f"the CAX peer supports CAX 0.3.x and 0.4.x; ComplexSystem.__call__ takes {list(_CALL_KEYWORDS)}")


class SobelNCA(ComplexSystem):
    """The ``GrowingNCA`` / ``DiffusingNCA`` class of CAX's examples, sized by a case."""

    def __init__(self, channel_size: int, hidden_size: int, *, remat: bool = False, rngs: nnx.Rngs):
        """Build CAX's perceive and update and set the Sobel kernels (as the examples do)."""
        self.perceive = ConvPerceive(
            channel_size=channel_size,
            perception_size=3 * channel_size,
            feature_group_count=channel_size,
            rngs=rngs,
        )
        self.update = NCAUpdate(
            channel_size=channel_size,
            perception_size=3 * channel_size,
            hidden_layer_sizes=(hidden_size,),
            cell_dropout_rate=1 - FIRE_RATE,
            zeros_init=True,
            rngs=rngs,
        )
        dims = {"num_dims": 2} if CAX_04 else {"ndim": 2}
        kernel = jnp.concatenate([identity_kernel(**dims), grad_kernel(**dims)], axis=-1)
        kernel = jnp.expand_dims(jnp.concatenate([kernel] * channel_size, axis=-1), axis=-2)
        self.perceive.conv.kernel = nnx.Param(kernel)
        self.remat = remat  # CAX 0.4's own ComplexSystem.remat; this _step's on 0.3

    def _transition(self, state, input=None):
        return self.update(state, self.perceive(state), input)

    def _step(self, state, input=None, *, sow: bool = False):
        if self.remat and not CAX_04:
            next_state = nnx.remat(lambda cs, s: cs._transition(s, input))(self, state)
        else:
            next_state = self._transition(state, input)
        if sow:
            self.sow(nnx.Intermediate, "state", next_state)
        return next_state


class ViTPerceive(Perceive):
    """``ViTPerceive`` of CAX's attention example: dense attention masked to the 3x3 neighbourhood."""

    def __init__(
        self,
        channel_size: int,
        perception_size: int,
        *,
        num_heads: int,
        hidden_size: int,
        proj_size: int,
        max_position_size: int,
        position_embed_features: int = 4,
        rngs: nnx.Rngs,
    ):
        """Token projection, learned row/column embeddings, multi-head attention."""
        self.linear = nnx.Linear(in_features=channel_size, out_features=proj_size, rngs=rngs)
        self.position_embed = nnx.Embed(num_embeddings=max_position_size, features=position_embed_features, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads=num_heads,
            in_features=proj_size + 2 * position_embed_features,
            qkv_features=hidden_size,
            out_features=perception_size,
            decode=False,
            rngs=rngs,
        )

    def __call__(self, state):
        """Perception ``(..., H, W, perception_size)``."""
        state = self.linear(state)
        h, w = state.shape[-3], state.shape[-2]
        embed_h = self.position_embed(jnp.arange(h))
        embed_w = self.position_embed(jnp.arange(w))
        position = jnp.concatenate(
            [jnp.repeat(embed_h[:, None, :], w, axis=1), jnp.repeat(embed_w[None, :, :], h, axis=0)], axis=-1
        )
        tokens = jnp.concatenate([state, position], axis=-1)
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        rows, cols = jnp.broadcast_to(rows, (h, w)).reshape(-1), jnp.broadcast_to(cols, (h, w)).reshape(-1)
        mask = (jnp.abs(rows[:, None] - rows[None, :]) <= 1) & (jnp.abs(cols[:, None] - cols[None, :]) <= 1)
        tokens = tokens.reshape(*tokens.shape[:-3], h * w, tokens.shape[-1])
        perception = self.attention(tokens, mask=mask)
        return perception.reshape(*perception.shape[:-2], h, w, perception.shape[-1])


class ViTNCA(ComplexSystem):
    """``ViTNCA`` of CAX's attention example."""

    def __init__(self, channel_size: int, hidden_size: int, grid: int, *, rngs: nnx.Rngs):
        """Attention perceive (48 features, 4 heads, like nca_lab's) and CAX's residual update."""
        self.perceive = ViTPerceive(
            channel_size, 48, num_heads=4, hidden_size=48, proj_size=40, max_position_size=grid, rngs=rngs
        )
        self.update = ResidualUpdate(
            num_spatial_dims=2,
            channel_size=channel_size,
            perception_size=48,
            hidden_layer_sizes=(hidden_size,),
            cell_dropout_rate=1 - FIRE_RATE,
            zeros_init=True,
            rngs=rngs,
        )

    def _step(self, state, input=None, *, sow: bool = False):
        next_state = self.update(state, self.perceive(state), input)
        if sow:
            self.sow(nnx.Intermediate, "state", next_state)
        return next_state


def build(case: Case, seed: int = 0) -> Workload:
    """The CAX workload of ``case``."""
    rngs = nnx.Rngs(seed)
    channels, batch_size, num_steps = case.channels, case.batch, case.steps
    y = jnp.asarray(load_target("🦎", TARGET_SIZE, case.padding))
    if case.perceive == "attention":
        cs = ViTNCA(channels, case.hidden, case.grid, rngs=rngs)
    else:
        cs = SobelNCA(channels, case.hidden, remat=case.peer_remat, rngs=rngs)
    key = jax.random.key(seed)
    remat = ", nnx.remat" if case.peer_remat else ""

    def seed_state(_=None):
        state = jnp.zeros(y.shape[:2] + (channels,))
        return state.at[y.shape[0] // 2, y.shape[1] // 2, -1].set(1.0)

    def noisy_state(key):
        state = jnp.zeros(y.shape[:2] + (channels,))
        alpha_key, noise_key = jax.random.split(key)
        alpha = jax.random.uniform(alpha_key)
        noisy = jnp.clip((1 - alpha) * y + alpha * jax.random.normal(noise_key, y.shape), 0.0, 1.0)
        return state.at[..., -4:].set(noisy)

    def mse(state):
        return jnp.mean(jnp.square(state[..., -4:] - y))

    if case.kind == "rollout":
        state_init = jax.vmap(seed_state)(jnp.zeros(batch_size))

        @nnx.jit
        def rollout(cs, state):
            state_axes = nnx.StateAxes({nnx.RngState: 0, ...: None})
            return nnx.split_rngs(splits=batch_size)(
                nnx.vmap(lambda cs, state: cs(state, num_steps=num_steps), in_axes=(state_axes, 0))
            )(cs, state)

        return Workload(
            call=lambda i: rollout(cs, state_init), trace=lambda: rollout.trace(cs, state_init), note="nnx.vmap(cs)"
        )

    wrt = nnx.Param if case.perceive == "attention" else nnx.All(nnx.Param, nnx.PathContains("update"))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate=LEARNING_RATE))
    optimizer = nnx.Optimizer(cs, tx, wrt=wrt)

    if case.task == "growing":
        require(case.pool >= batch_size, f"the growing peer needs a pool of at least {batch_size} samples")

        @nnx.jit
        def loss_fn(cs, state, key):
            if CAX_04:
                state_axes = nnx.StateAxes({nnx.RngState: 0, ...: None})
                _, state = nnx.split_rngs(splits=batch_size)(
                    nnx.vmap(
                        lambda cs, state: cs(state, num_steps=num_steps, return_states=True), in_axes=(state_axes, 0)
                    )
                )(cs, state)
            else:
                state_axes = nnx.StateAxes({nnx.RngState: 0, nnx.Intermediate: 0, ...: None})
                nnx.split_rngs(splits=batch_size)(
                    nnx.vmap(lambda cs, state: cs(state, num_steps=num_steps, sow=True), in_axes=(state_axes, 0))
                )(cs, state)
                state = nnx.pop(cs, nnx.Intermediate).state.value[0]
            idx = jax.random.randint(key, (batch_size,), num_steps // 2, num_steps)
            state = state[jnp.arange(batch_size), idx]
            return mse(state), state

        @nnx.jit
        def train_step(cs, optimizer, pool, key):
            sample_key, loss_key = jax.random.split(key)
            pool_idx, batch = pool.sample(sample_key, batch_size=batch_size)
            current_state = batch["state"]
            sort_idx = jnp.argsort(jax.vmap(mse)(current_state), descending=True)
            pool_idx = pool_idx[sort_idx]
            current_state = current_state[sort_idx].at[0].set(seed_state())
            (loss, current_state), grad = nnx.value_and_grad(loss_fn, has_aux=True, argnums=nnx.DiffState(0, wrt))(
                cs, current_state, loss_key
            )
            optimizer.update(cs, grad)
            return loss, pool.update(pool_idx, {"state": current_state})

        carry = {"pool": Pool.create({"state": jax.vmap(seed_state)(jnp.zeros(case.pool))})}

        def call(i: int):
            loss, carry["pool"] = train_step(cs, optimizer, carry["pool"], jax.random.fold_in(key, i))
            return loss, carry["pool"]

        return Workload(
            call=call,
            trace=lambda: train_step.trace(cs, optimizer, carry["pool"], key),
            note=f"example 40 train_step, pool {case.pool}{remat}",
        )

    @nnx.jit
    def loss_fn(cs, state):
        state_axes = nnx.StateAxes({nnx.RngState: 0, nnx.Intermediate: 0, ...: None})
        state = nnx.split_rngs(splits=batch_size)(
            nnx.vmap(lambda cs, state: cs(state, num_steps=num_steps), in_axes=(state_axes, 0))
        )(cs, state)
        return mse(state)

    @nnx.jit
    def train_step(cs, optimizer, key):
        current_state = jax.vmap(noisy_state)(jax.random.split(key, batch_size))
        loss, grad = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(cs, current_state)
        optimizer.update(cs, grad)
        return loss

    how = "with example 48's ViTPerceive" if case.perceive == "attention" else "(keeps CAX's alive mask)"
    return Workload(
        call=lambda i: train_step(cs, optimizer, jax.random.fold_in(key, i)),
        trace=lambda: train_step.trace(cs, optimizer, key),
        note=f"example 43 train_step {how}{remat}",
    )
