"""Several processes (one per host) training one run, data parallel.

Every process runs the same command (JAX's multi-controller model, the "Multi-process" guide
of the JAX docs): each builds the same model and pool from the same seed, steps the same
sharded arrays (:mod:`nca_lab.train.parallel`) and saves its shards of each checkpoint
(Orbax coordinates the processes). Only process 0 writes the run's other files (config,
manifest, ``metrics.jsonl``, pictures, ``summary.json``) and logs to W&B.

The processes must agree on what they do, or they wait for each other forever in the first
collective that differs: the run dir and the settings are compared across processes before
training, a failure of one process to start (a held run dir lock) stops all of them, and a
stop signal received by any process stops every one after the same step.
"""

import json
import re

import jax
import numpy as np
from jax.errors import JaxRuntimeError
from jax.experimental import multihost_utils

from nca_lab.errors import ConfigError, is_integer, require


def initialize(
    enabled: bool,
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    heartbeat_timeout_seconds: int = 100,
):
    """Connect this process to the others (``jax.distributed.initialize``), once per process.

    ``enabled`` false: one process. ``None`` arguments are detected by JAX on SLURM, Open MPI,
    Kubernetes and Cloud TPU. ``heartbeat_timeout_seconds``: how long the others wait for a
    process that stopped answering (one killed, its host lost) before they stop too (JAX's
    default, 100). Must run before JAX computes anything.
    """
    require(isinstance(enabled, bool), f"distributed.enabled must be true or false, got {enabled!r}")
    if not enabled or jax.distributed.is_initialized():  # a sweep's later jobs run in the same process
        return
    for name, value, least in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        message = f"distributed.{name} must be an integer >= {least} (or null: detected), got {value!r}"
        require(value is None or (is_integer(value) and value >= least), message)
    require(
        is_integer(heartbeat_timeout_seconds) and heartbeat_timeout_seconds >= 1,
        f"distributed.heartbeat_timeout_seconds must be an integer >= 1, got {heartbeat_timeout_seconds!r}",
    )
    # JAX's preemption service would take SIGTERM from the app's handlers (a stop before or
    # after the training steps was ignored); the training steps agree on stops with any_process.
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds
        )
    except ValueError as err:  # no cluster detected
        raise ConfigError(
            f"distributed.enabled=true: {str(err).rstrip('.')} (set distributed.coordinator_address, "
            "num_processes and process_id where JAX detects no cluster)"
        ) from err
    except RuntimeError as err:  # JAX already computed something in this process
        raise ConfigError(f"distributed.enabled=true: {err}") from err


#: How JAX words a computation that failed as it ran: an absl status code, then the cause.
_FAILED_STATUS = re.compile(r"(CANCELLED|UNKNOWN|INTERNAL|UNAVAILABLE|ABORTED|DEADLINE_EXCEEDED|DATA_LOSS): ")


def failed_computation(err: BaseException) -> bool:
    """Whether ``err`` is a computation failing as it ran, as all of them do once another
    process of the run is gone: a ``JaxRuntimeError``, or where a collective fails as it is
    dispatched a ``ValueError`` ("UNKNOWN: Gloo AllGather failed: ... Connection reset by peer")."""
    return isinstance(err, JaxRuntimeError) or (isinstance(err, ValueError) and bool(_FAILED_STATUS.match(str(err))))


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0, or the only one)."""
    return jax.process_index() == 0


def check_same(**values) -> None:
    """Raise :class:`ConfigError` on every process unless all processes have the same ``values``
    (JSON-serialisable, nested dicts compared key by key), naming what differs."""
    if jax.process_count() == 1:
        return
    for name, value in values.items():
        seen = [json.loads(text) for text in _gather_text(json.dumps(value, sort_keys=True, default=str))]
        flat = [_flatten(one, name) for one in seen]
        differ = sorted(key for key in set().union(*flat) if len({json.dumps(f.get(key)) for f in flat}) > 1)
        if differ:
            shown = "; ".join(
                f"{key}: " + ", ".join(f"process {i} {json.dumps(f.get(key))}" for i, f in enumerate(flat))
                for key in differ[:3]
            )
            raise ConfigError(f"the processes differ in {shown}: start every process with the same command")


def raise_together(error: ConfigError | OSError | None) -> None:
    """Raise on every process the first process's ``error`` (``None``: none had one; an
    :class:`OSError` stays one, anything else is a :class:`ConfigError`), so that one
    process's failure to start does not leave the others waiting for it."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    kind = "O" if isinstance(error, OSError) else "C"
    for index, text in enumerate(_gather_text("" if error is None else kind + str(error))):
        if text:
            message = f"process {index}: {text[1:]}"
            raise (OSError if text[0] == "O" else ConfigError)(message) from error


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def sync(name: str) -> None:
    """Wait until every process gets here (``name``: the same point on every process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"nca_lab:{name}")


def _gather_text(text: str) -> list[str]:
    """Every process's ``text``, by process index."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    longest = int(np.max(multihost_utils.process_allgather(np.array(len(data)))))
    padded = np.zeros(longest + 1, dtype=np.uint8)
    padded[: len(data)] = data
    gathered = multihost_utils.process_allgather(padded)
    return [bytes(row).rstrip(b"\0").decode() for row in gathered]


def _flatten(value, key: str) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"<key>.a.b": 1}``."""
    if not isinstance(value, dict):
        return {key: value}
    return {k: v for name, inner in value.items() for k, v in _flatten(inner, f"{key}.{name}").items()}
