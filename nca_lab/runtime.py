"""Process settings of the command-line tools, made before JAX loads.

Reference: JAX docs, "Persistent compilation cache" and "GPU memory allocation".
"""

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: Exit status of a command stopped by SIGTERM or SIGINT (128 + SIGTERM, as a batch scheduler's stop).
STOPPED = 143
#: What a stopped command that has nothing to save prints.
STOPPED_BY_SIGNAL = "stopped: by a signal"


#: The variables :func:`configure_jax_environment` set, with the values it gave them.
_SET_HERE: dict[str, str] = {}


def configure_jax_environment() -> None:
    """Set defaults for a training process, keeping anything the user already set.

    * A persistent compilation cache shared by every job (``NCA_LAB_CACHE_DIR`` or
      ``~/.cache/nca_lab/jax``), so a sweep compiles each shape once.
    * No GPU memory preallocation, so several jobs can share a GPU.

    Called again (the app does, once Hydra's ``hydra.job.env_set`` is applied, before JAX
    loads), it updates the values it set itself: an ``NCA_LAB_CACHE_DIR`` set there counts.
    """
    defaults = {
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "NCA_LAB_CACHE_DIR", str(Path.home() / ".cache" / "nca_lab" / "jax")
        ),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    for name, value in defaults.items():
        if os.environ.get(name, _SET_HERE.get(name)) == _SET_HERE.get(name):  # unset, or set by this function
            os.environ[name] = _SET_HERE[name] = value


def route_checkpoint_reports(handlers: list[logging.Handler]) -> None:
    """Orbax's notes and its worker threads' tracebacks (the ``absl`` and ``asyncio`` loggers)
    go to ``handlers`` only (a training job's log file), not the console, where a failure is
    one ``error:`` line; nowhere without any (grow, export: "Failed to json parse" of a
    checkpoint they then read)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers = list(handlers) or [logging.NullHandler()]
        logger.propagate = False


def quiet_checkpoint_io_callbacks() -> None:
    """Drop what a failed checkpoint write or read leaves behind it: the ``RuntimeError: Event
    loop is closed`` of TensorStore's callbacks, and Orbax's abandoned reads.

    When one of a checkpoint's writes fails (a full disk) or one of its reads (a damaged
    checkpoint), orbax reports it, which the commands print as one ``error:`` line, and closes
    its asyncio loop; TensorStore's other writes and reads, still in flight, then call back into
    the closed loop, and the reads it had not awaited fail again as they are collected. Python
    prints each as an unraisable exception: pages of tracebacks under the one line that
    matters (seen in half the runs on a full 600 kB file system). Every other unraisable
    exception still goes to the hook that was there. Called again, with the hook in place,
    it does nothing (each :class:`~nca_lab.ckpt.RunCheckpointer` calls it: a notebook's, too).
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_checkpoint_io_noise", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        closed_loop = isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        abandoned_read = getattr(unraisable.object, "__name__", "") == "_read_array_index_and_device_put"
        if not (closed_loop or abandoned_read):
            previous(unraisable)

    hook.drops_checkpoint_io_noise = True
    sys.unraisablehook = hook


#: What a stop by :func:`stop_on_signals`'s handler runs before the process exits, newest
#: first: :func:`on_stop`.
_AT_STOP: list[Callable[[], None]] = []


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]):
    """Inside, a stop by :func:`stop_on_signals`'s handler runs ``callback`` before the process
    exits: a run's logger closes its run (W&B's stayed "running") when a signal comes outside the
    training steps, before the first or in the final evaluation."""
    _AT_STOP.append(callback)
    try:
        yield
    finally:
        _AT_STOP.remove(callback)


def stop_on_signals(message: str) -> dict:
    """Make SIGTERM and SIGINT print ``message`` (one line), run what :func:`on_stop` holds, and
    exit :data:`STOPPED` at once; return the handlers they had (for ``signal.signal`` to restore).

    Not by raising ``KeyboardInterrupt``: raised in an import it is a page of traceback,
    inside XLA's compiler it crashed the process (SIGSEGV), and in a garbage-collection
    callback Python prints and ignores it, so the command runs on.
    """

    def stop(signum, frame) -> None:
        del signum, frame
        for callback in reversed(_AT_STOP):
            with contextlib.suppress(Exception):  # stopping must not turn into a traceback
                callback()
        os.write(2, f"{message}\n".encode())
        os._exit(STOPPED)

    # SIGTERM's last: once it is caught, so is SIGINT (tests wait for it, as Python catches SIGINT from its start)
    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def run_checkpoint_reader(main: Callable[[], None]) -> None:
    """Run ``main``, a command that reads checkpoints (``grow``, ``export``): SIGTERM and
    SIGINT are one line and exit status 143, and a damaged checkpoint's one line has no pages
    of Orbax's under it (:func:`quiet_checkpoint_io_callbacks`, :func:`route_checkpoint_reports`)."""
    stop_on_signals(STOPPED_BY_SIGNAL)
    quiet_checkpoint_io_callbacks()
    route_checkpoint_reports([])
    main()


def wait_for(tree):
    """``tree`` once its JAX arrays are computed, checked every millisecond.

    JAX computes asynchronously; a blocking wait (``np.asarray``, ``block_until_ready``)
    stays in XLA until the computation ends, and Python runs a signal handler only after
    it, so Ctrl-C in a long rollout did nothing for minutes. Polling returns to Python.
    """
    import jax  # here: this module is imported before JAX, to configure it

    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, jax.Array) and not leaf.is_ready():
            time.sleep(0.001)
    return tree
