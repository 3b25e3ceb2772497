"""Data parallelism over devices with ``jax.sharding``: batch and pool split, parameters replicated.

The training step itself does not change. Its inputs are placed on a one-axis mesh
(``"data"``): the pool's samples are split across devices, the model and optimizer are
copied to every device, and the step constrains the drawn batch to be split the same way.
XLA's SPMD partitioner then runs each device's share of the rollout locally and sums the
gradients across devices (the loss is a mean over the batch), so a data-parallel step
computes the same update as a single-device one, up to the order of that sum. Each sample
keeps its own PRNG key, and jax's partitionable threefry gives the same random numbers
whatever the sharding, so the fire masks do not change either. The fused kernels
(``kernel=pallas``), which the partitioner cannot split, run per device in a ``shard_map``
(:func:`~nca_lab.kernels.fused_rollout.split_over`).

Several processes (:mod:`nca_lab.train.multihost`): :func:`data_mesh` spans the devices of all
of them, and every process builds the same initial pool and model from the same seed, so
``jax.device_put`` onto the global sharding is consistent.

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` splits the host into ``N``
devices (set it before JAX starts).
"""

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from nca_lab.errors import require

AXIS = "data"


def data_mesh() -> jax.sharding.Mesh:
    """A one-axis ``"data"`` mesh over every device of every process.

    ``AxisType.Auto`` keeps the classic behaviour (sharding propagated by XLA), which
    ``jax.make_mesh`` no longer defaults to.
    """
    devices = jax.devices()
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
    return _spread(tree, batch_sharding(mesh))


def place_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Put a copy of ``tree`` (say, a PRNG key) on every device: one array across all processes,
    which Orbax can save from several processes (a process-local array it refuses)."""
    return _spread(tree, replicated(mesh))


def _spread(tree: Any, sharding: NamedSharding) -> Any:
    """``jax.device_put(tree, sharding)``, also from arrays on one device of this process (a
    restored checkpoint, a split key) when the mesh spans several processes: ``device_put``
    then takes only host values (the same on every process), so they go through NumPy."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def spread(leaf):
        if not isinstance(leaf, jax.Array):
            return jax.device_put(leaf, sharding)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(np.asarray(leaf), sharding)

    return jax.tree.map(spread, tree)


def replicate(mesh: jax.sharding.Mesh, *nodes: nnx.Module | nnx.Optimizer) -> None:
    """Copy the state of the given modules and optimizers to every device, in place."""
    for node in nodes:
        state = nnx.state(node)
        nnx.update(node, place_replicated(state, mesh))
