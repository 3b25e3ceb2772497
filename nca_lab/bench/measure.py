"""Timing and memory of benchmark workloads, several implementations in one process.

Each JAX implementation is compiled ahead of time first (``trace().lower().compile()``, which the
following jitted calls reuse), so the compile time is measured alone and a plan that does
not fit in memory is refused before it runs; an eager one (the PyTorch peer) has neither.
Tracing and lowering (``lower_s``) and XLA's compilation (``compile_s``) are timed apart: a
first call pays both. One compile on a shared machine varies by tens of percent, so
``compile_repeats`` compiles every implementation that many times from cold (JAX's caches
cleared before each round, the order of the implementations reversed every other round, so
that none always pays for warming what they share) and reports the medians.
The timed calls of the implementations of a case are interleaved (one step of each in
turn): on a shared machine, load from other processes then slows all of them alike. Every call is synchronised
(``jax.block_until_ready``; long steps by :func:`~nca_lab.runtime.wait_for`, which Ctrl-C can stop).

Peak memory: on CPU the growth of the process's peak resident set during the first call
after compilation (``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs``); elsewhere, and where ``/proc`` is missing, the bytes XLA plans
for one call (``Compiled.memory_analysis``: arguments + outputs + temporaries - aliased).
Both are in every record, with ``peak_source`` saying which one ``peak_bytes`` is.
"""

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from nca_lab.runtime import wait_for

#: Timing that would take longer than this is announced with its estimate.
LONG_SECONDS = 300
#: Timed steps longer than this are waited for by polling (:func:`~nca_lab.runtime.wait_for`,
#: at most a millisecond late), so that Ctrl-C stops them; shorter ones by XLA's exact wait.
POLLED_SECONDS = 0.1


@dataclass
class Workload:
    """One implementation of a case.

    Attributes:
        call: ``call(i)`` runs benchmarked step ``i`` (threading any state, such as a pool,
            from one call to the next) and returns what to synchronise on.
        trace: ``trace()`` returns the ``jax.stages.Traced`` of the jitted step (lowered for
            this process's devices here, for others by ``experiments/gpu/aot.py``); ``None``
            for an eager implementation (nothing to compile: ``compile_s`` is 0).
        note: how this implementation runs the case (shown in the table).
    """

    call: Callable[[int], Any]
    trace: Callable[[], Any] | None
    note: str = ""


@dataclass
class Measurement:
    """What was measured for one implementation of one case (times in seconds)."""

    times: list[float]
    compile_s: float
    plan_bytes: int | None
    rss_peak_bytes: int | None
    status: str = "ok"
    reason: str = ""
    lower_s: float = 0.0
    compile_each: list[float] = field(default_factory=list)
    lower_each: list[float] = field(default_factory=list)

    @property
    def peak(self) -> tuple[int | None, str]:
        """``(peak_bytes, peak_source)``: resident-set growth where measured, else XLA's plan."""
        if self.rss_peak_bytes is not None:
            return self.rss_peak_bytes, "rss_growth_first_call"
        return self.plan_bytes, "xla_memory_analysis"


def plan_bytes(compiled) -> int | None:
    """Bytes XLA allocates for one call of ``compiled``, or ``None`` if it does not say."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )


def _rss_kib() -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` in KiB, or ``None`` without Linux ``/proc``."""
    try:
        status = Path("/proc/self/status").read_text()
        return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))
    except (OSError, AttributeError):
        return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        return True
    except OSError:
        return False


def measure(
    workloads: dict[str, Workload],
    *,
    repeats: int,
    warmup: int,
    memory_budget: float,
    max_seconds: float | None = None,
    compile_repeats: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Measurement]:
    """Compile, check the memory plan, warm up, then time ``repeats`` interleaved calls.

    Args:
        workloads: implementations of one case, by name.
        repeats: timed calls of each implementation.
        warmup: untimed calls after compilation (at least one).
        memory_budget: bytes; a plan above it is not run (status ``"too_big"``).
        max_seconds: if given, an implementation whose last warm-up call says its timed
            calls would take longer gets fewer of them (at least 3); records count them.
        compile_repeats: cold compiles of each JAX implementation (:func:`compile_all`).
        log: progress messages.
    """
    on_cpu = jax.default_backend() == "cpu"
    results = compile_all(workloads, repeats=compile_repeats, log=log)
    running: dict[str, Workload] = {}
    counts: dict[str, int] = {}
    syncs: dict[str, Callable[[Any], Any]] = {}
    for name, work in workloads.items():
        planned = results[name].plan_bytes
        if results[name].status == "failed":
            continue
        if planned is not None and planned > memory_budget:
            results[name].status = "too_big"
            results[name].reason = f"plans {planned / 2**30:.1f} GiB > budget {memory_budget / 2**30:.1f} GiB"
            continue
        try:
            before = _rss_kib() if on_cpu and _reset_peak_rss() else None
            tick = time.perf_counter()
            wait_for(work.call(0))
            last = time.perf_counter() - tick
            after = _rss_kib() if before is not None else None
            if before is not None and after is not None:
                results[name].rss_peak_bytes = max(0, after[1] - before[0]) * 1024
            for i in range(1, max(1, warmup)):
                tick = time.perf_counter()
                wait_for(work.call(i))
                last = time.perf_counter() - tick
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory
            results[name].status, results[name].reason = "failed", first_line(exc)
            continue
        running[name] = work
        syncs[name] = wait_for if last > POLLED_SECONDS else jax.block_until_ready
        counts[name] = repeats if max_seconds is None else min(repeats, max(3, int(max_seconds / last)))
        if counts[name] * last > LONG_SECONDS:
            log(
                f"  {name}: {counts[name]} timed steps of about {last:.0f} s each, about "
                f"{counts[name] * last / 60:.0f} min (--max-seconds S caps it)"
            )
    if running:
        log("  timing " + ", ".join(f"{name} x{counts[name]}" for name in running))
    for i in range(max(counts.values(), default=0)):
        for name, work in list(running.items()):
            if i >= counts[name]:
                continue
            try:
                tick = time.perf_counter()
                syncs[name](work.call(warmup + i))
                results[name].times.append(time.perf_counter() - tick)
            except Exception as exc:  # noqa: BLE001
                results[name].status, results[name].reason = "failed", first_line(exc)
                del running[name]
    return results


def compile_all(workloads: dict[str, Workload], *, repeats: int, log: Callable[[str], None]) -> dict[str, Measurement]:
    """Trace, lower and compile every JAX implementation ``repeats`` times; measurements with no
    timed calls yet: the median lower and compile times, each round's, and XLA's memory plan.

    With several rounds, JAX's in-memory caches are cleared before each (the persistent cache
    is the caller's to turn off) and every other round takes the implementations in reverse
    order. The last round's executables stay cached for the calls that follow. An
    implementation that fails to compile is ``"failed"`` and left out of later rounds.
    """
    results = {name: Measurement([], 0.0, None, None) for name in workloads}
    compiled_ones = [name for name, work in workloads.items() if work.trace is not None]
    for round_ in range(repeats):
        if repeats > 1:
            jax.clear_caches()
        order = compiled_ones if round_ % 2 == 0 else compiled_ones[::-1]
        for name in order:
            result = results[name]
            if result.status == "failed":
                continue
            log(f"  {name}: compiling" + (f" ({round_ + 1}/{repeats})" if repeats > 1 else ""))
            try:
                tick = time.perf_counter()
                lowered = workloads[name].trace().lower()
                tock = time.perf_counter()
                compiled = lowered.compile()
                done = time.perf_counter()
            except Exception as exc:  # noqa: BLE001 - one failing implementation must not stop the run
                results[name] = Measurement([], float("nan"), None, None, "failed", first_line(exc))
                continue
            result.lower_each.append(tock - tick)
            result.compile_each.append(done - tock)
            if result.plan_bytes is None:
                result.plan_bytes = plan_bytes(compiled)
            del lowered, compiled
    for name in compiled_ones:
        result = results[name]
        if result.status != "failed":
            result.lower_s = statistics.median(result.lower_each)
            result.compile_s = statistics.median(result.compile_each)
    return results


def summary(measurement: Measurement) -> dict[str, float]:
    """Median, minimum and maximum step time in milliseconds."""
    times = measurement.times
    if not times:
        return {"median_ms": float("nan"), "min_ms": float("nan"), "max_ms": float("nan")}
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def first_line(exc: BaseException) -> str:
    """``exc`` as a table cell: its type and the first line of its message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
