"""The nca_lab side of a benchmark case, built from the library's own modules.

A training case is what ``python -m nca_lab trainer.optimizer.gradient=clip`` runs for the
corresponding config: :func:`~nca_lab.train.step.make_train_step` with the task, the sample
pool and an optax chain of global-norm clipping and Adam (the setting of CAX's
examples; the app's default normalises each parameter's gradient instead). The growing
suites use the regenerating task with ``damage_n=0`` (Growing NCA's experiment 2: a pool, no
damage), the setting of CAX's growing example; the rollout length is fixed at the case's
``steps`` (the trainer draws it from a range, which a benchmark should not).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from nca_lab.bench.measure import Workload
from nca_lab.bench.suites import FIRE_RATE, LEARNING_RATE, TARGET_SIZE, Case
from nca_lab.nca import NCA, grow
from nca_lab.perceive.attention import AttentionPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.tasks.diffusing import DiffusingTask
from nca_lab.tasks.regenerating import RegeneratingTask
from nca_lab.train.optim import make_optimizer
from nca_lab.train.pool import init_pool
from nca_lab.train.step import make_train_step
from nca_lab.update.residual import ResidualUpdate


def build_model(case: Case, alive_threshold: float | None, seed: int = 0, kernel: str = "xla") -> NCA:
    """The NCA of ``case``: Sobel or local-attention perceive, residual MLP update."""
    rngs = nnx.Rngs(params=seed)
    if case.perceive == "attention":
        perceive = AttentionPerceive(case.channels, perception_size=48, num_heads=4, rngs=rngs)
    else:
        perceive = SobelPerceive(case.channels)
    update = ResidualUpdate(
        perceive.out_features, case.channels, hidden_sizes=[case.hidden], fire_rate=FIRE_RATE, rngs=rngs
    )
    return NCA(perceive, update, alive_threshold=alive_threshold, kernel=kernel)


def build_task(case: Case):
    """The task of ``case`` on its grid."""
    if case.task == "diffusing":
        return DiffusingTask(case.channels, target_size=TARGET_SIZE, padding=case.padding)
    return RegeneratingTask(
        case.channels, target_size=TARGET_SIZE, padding=case.padding, pool_size=max(case.pool, case.batch), damage_n=0
    )


def kernel_of(case: Case, kernel: str) -> str:
    """The step nca_lab runs ``case`` with when asked for ``kernel``: the fused kernels compute
    the sobel perceive only, so any other runs XLA's."""
    return kernel if case.perceive == "sobel" else "xla"


def build(
    case: Case, seed: int = 0, kernel: str = "xla", unroll: int = 1, rollout_steps: tuple[int, int] | None = None
) -> Workload:
    """The nca_lab workload of ``case``; ``kernel`` and ``unroll`` as in :class:`~nca_lab.nca.NCA`'s rollout.

    ``rollout_steps``: a train step draws each batch's length from this range, as the trainer
    does (``experiments/gpu/drawn_length.py``); by default it is the case's ``steps``.
    """
    task = build_task(case)
    model = build_model(case, task.alive_threshold, seed, kernel_of(case, kernel))
    path = ("Pallas fused rollout" if model.uses_fused_kernel else "XLA") + (f", unroll {unroll}" if unroll > 1 else "")
    if model.compacts(case.batch * case.grid * case.grid):
        path += ", active cells"
    key = jax.random.key(seed)
    if case.kind == "rollout":
        batch = task.sample(key, case.batch)
        state = jnp.asarray(batch.state)
        keys = jax.random.split(key, case.batch)
        return Workload(
            call=lambda i: grow(model, state, keys, case.steps, unroll=unroll)[0],
            trace=lambda: grow.trace(model, state, keys, case.steps, unroll=unroll),
            note=f"nca_lab.nca.grow, {path}",
        )
    optimizer = nnx.Optimizer(model, make_optimizer(LEARNING_RATE, gradient="clip"), wrt=nnx.Param)
    rollout_steps = rollout_steps or (case.steps, case.steps)
    train_step = make_train_step(task, batch_size=case.batch, rollout_steps=rollout_steps, unroll=unroll)
    carry = {"pool": init_pool(task, key, task.pool_size) if task.pool_size else None}

    def call(i: int):
        carry["pool"], metrics = train_step(model, optimizer, carry["pool"], jax.random.fold_in(key, i))
        return carry["pool"], metrics

    vjp = "rollout VJP" if model.uses_fused_kernel else "manual VJP" if model.uses_manual_vjp else "autodiff"
    return Workload(
        call=call,
        trace=lambda: train_step.trace(model, optimizer, carry["pool"], key),
        note=f"make_train_step, {path}, {vjp}" + (f", pool {task.pool_size}" if task.pool_size else ""),
    )
