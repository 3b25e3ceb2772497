"""The command-line tools' process settings (:mod:`nca_lab.runtime`)."""

import sys
from types import SimpleNamespace

from nca_lab.runtime import quiet_checkpoint_write_callbacks


def test_only_the_closed_event_loop_of_a_failed_checkpoint_write_is_dropped(monkeypatch):
    """A full disk: TensorStore's writes still in flight call back into orbax's closed asyncio
    loop, and Python reports each as unraisable. Those are dropped; any other still reaches the
    hook that was installed before."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    quiet_checkpoint_write_callbacks()
    closed, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
    for value in (closed, other, ValueError("Event loop is closed")):
        sys.unraisablehook(SimpleNamespace(exc_type=type(value), exc_value=value, exc_traceback=None, object=None))
    assert [str(v) for v in reported] == ["something else", "Event loop is closed"]
    assert type(reported[1]) is ValueError
