"""Data parallelism over devices with ``jax.sharding``: batch and pool split, parameters replicated.

The training step itself does not change. Its inputs are placed on a one-axis mesh
(``"data"``): the pool's samples are split across devices, the model and optimizer are
copied to every device, and the step constrains the drawn batch to be split the same way.
XLA's SPMD partitioner then runs each device's share of the rollout locally and sums the
gradients across devices (the loss is a mean over the batch), so a data-parallel step
computes the same update as a single-device one, up to the order of that sum. Each sample
keeps its own PRNG key, and jax's partitionable threefry gives the same random numbers
whatever the sharding, so the fire masks do not change either.

Multi-host: call ``jax.distributed.initialize()`` (JAX's "Multi-process" guide) in every
process before anything touches JAX; :func:`data_mesh` then spans the devices of all
processes, and every process builds the same initial pool and model from the same seed, so
``jax.device_put`` onto the global sharding is consistent.

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` splits the host into ``N``
devices (set it before JAX starts).
"""

from typing import Any

import jax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from nca_lab.errors import require

AXIS = "data"


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A one-axis ``"data"`` mesh over ``devices`` (default: every device of every process).

    ``AxisType.Auto`` keeps the classic behaviour (sharding propagated by XLA), which
    ``jax.make_mesh`` no longer defaults to.
    """
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Split the leading (sample) axis across the mesh."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The same array on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(mesh: jax.sharding.Mesh, **sizes: int) -> None:
    """Raise :class:`~nca_lab.errors.ConfigError` unless every size splits evenly over the mesh."""
    n = mesh.size
    for name, size in sizes.items():
        require(
            size % n == 0, f"{name} ({size}) must be a multiple of the number of devices ({n}) for data parallelism"
        )


def constrain(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Inside ``jit``: keep every array of ``tree`` split across the mesh along its first axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def place(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Put a pool (or any batch-first pytree) onto the devices, split along its first axis."""
    return jax.device_put(tree, batch_sharding(mesh))


def replicate(mesh: jax.sharding.Mesh, *nodes: nnx.Module | nnx.Optimizer) -> None:
    """Copy the state of the given modules and optimizers to every device, in place."""
    for node in nodes:
        state = nnx.state(node)
        nnx.update(node, jax.device_put(state, replicated(mesh)))
