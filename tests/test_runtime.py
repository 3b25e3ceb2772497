"""The command-line tools' process settings (:mod:`nca_lab.runtime`)."""

import os
import sys
from types import SimpleNamespace

from nca_lab.runtime import quiet_checkpoint_io_callbacks


def test_only_the_closed_event_loop_and_the_abandoned_reads_of_a_failed_checkpoint_are_dropped(monkeypatch):
    """A full disk: TensorStore's writes still in flight call back into orbax's closed asyncio
    loop, and Python reports each as unraisable; a damaged checkpoint: the reads orbax did not
    await fail as they are collected. Those are dropped; any other still reaches the hook that
    was installed before."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    quiet_checkpoint_io_callbacks()
    closed, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
    for value in (closed, other, ValueError("Event loop is closed")):
        sys.unraisablehook(SimpleNamespace(exc_type=type(value), exc_value=value, exc_traceback=None, object=None))
    assert [str(v) for v in reported] == ["something else", "Event loop is closed"]
    assert type(reported[1]) is ValueError

    async def _read_array_index_and_device_put():  # the name of orbax's coroutine
        pass

    async def another_coroutine():
        pass

    for coroutine in (_read_array_index_and_device_put(), another_coroutine()):
        value = Exception("Encountered error while reading array index")
        sys.unraisablehook(SimpleNamespace(exc_type=Exception, exc_value=value, exc_traceback=None, object=coroutine))
        coroutine.close()
    assert len(reported) == 3 and reported[2].args == ("Encountered error while reading array index",)


def test_the_cache_dir_follows_nca_lab_cache_dir_until_the_user_sets_jaxs_own(monkeypatch):
    """Hydra's ``hydra.job.env_set.NCA_LAB_CACHE_DIR`` comes after the import-time call: it was ignored."""
    from nca_lab import runtime

    monkeypatch.setattr(runtime, "_SET_HERE", {})
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NCA_LAB_CACHE_DIR", "/first")
    runtime.configure_jax_environment()
    monkeypatch.setenv("NCA_LAB_CACHE_DIR", "/set/by/hydra")
    runtime.configure_jax_environment()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/set/by/hydra"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/the/users")  # the user's own setting is kept
    monkeypatch.setenv("NCA_LAB_CACHE_DIR", "/third")
    runtime.configure_jax_environment()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/the/users"


def test_orbax_reports_go_to_the_given_handlers_only(monkeypatch):
    """grow and export give none: Orbax's "Failed to json parse" of a checkpoint they then read
    was printed twice before their own line; training gives its job's log file."""
    import logging

    from nca_lab.runtime import route_checkpoint_reports

    seen, on_console = [], []
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
    console = logging.Handler()
    console.emit = on_console.append
    monkeypatch.setattr(logging.getLogger(), "handlers", [console])
    kept = logging.Handler()
    kept.emit = seen.append
    route_checkpoint_reports([kept])
    logging.getLogger("absl").error("Failed to json parse")
    route_checkpoint_reports([])
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    assert [r.getMessage() for r in seen] == ["Failed to json parse"] and on_console == []
