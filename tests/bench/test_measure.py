"""``measure``: warm-up calls untimed, implementations interleaved, one failure isolated, plans
over the memory budget not run, ``max_seconds`` trimming the timed calls, repeated compiles
in alternating order (no timing asserted)."""

import time

import jax
import jax.numpy as jnp
import pytest

from nca_lab.bench.measure import Workload, measure


def recording(log, name, fail_at=None, seconds=0.0, clock=None):
    def call(i):
        log.append((name, i))
        if i == fail_at:
            raise RuntimeError(f"{name} broke at {i}")
        if clock is None:
            time.sleep(seconds)
        else:
            clock.now += max(seconds, 1e-6)  # measure divides by a call's time
        return i

    return Workload(call=call, trace=None, note=name)


class Clock:
    """``measure``'s ``time``: its ``perf_counter`` moves only as the workloads say. On a busy
    machine (six other processes on its core) a call that returned at once was timed 12 ms, and
    ``max_seconds=0.1`` then cut it to 8 timed calls."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("nca_lab.bench.measure.time", clock)
    return clock


def test_warm_up_calls_are_untimed_and_implementations_interleave():
    log = []
    results = measure(
        {"a": recording(log, "a"), "b": recording(log, "b")},
        repeats=3,
        warmup=2,
        memory_budget=float("inf"),
        log=lambda _: None,
    )
    assert log == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4), ("b", 4)]
    assert all(len(r.times) == 3 and r.status == "ok" and r.compile_s == 0 for r in results.values())


def test_one_failing_implementation_does_not_stop_the_others():
    log = []
    workloads = {"a": recording(log, "a"), "b": recording(log, "b", fail_at=3)}
    results = measure(workloads, repeats=4, warmup=1, memory_budget=float("inf"), log=lambda _: None)
    assert (results["b"].status, results["b"].reason) == ("failed", "RuntimeError: b broke at 3")
    assert len(results["b"].times) == 2 and len(results["a"].times) == 4 and results["a"].status == "ok"


def test_a_plan_over_the_memory_budget_is_compiled_but_never_run():
    calls = []
    step = jax.jit(lambda x: x * 2)
    x = jnp.ones((256, 256))
    work = Workload(call=lambda i: calls.append(i) or step(x), trace=lambda: step.trace(x), note="jit")
    result = measure({"big": work}, repeats=3, warmup=1, memory_budget=1024, log=lambda _: None)["big"]
    assert result.status == "too_big" and result.plan_bytes > 1024 and result.compile_s > 0
    assert calls == [] and result.times == []


def test_max_seconds_trims_slow_implementations_to_at_least_three_calls(clock):
    log = []
    results = measure(
        {"slow": recording(log, "slow", seconds=0.05, clock=clock), "fast": recording(log, "fast", clock=clock)},
        repeats=10,
        warmup=1,
        max_seconds=0.1,
        memory_budget=float("inf"),
        log=lambda _: None,
    )
    assert len(results["slow"].times) == 3 and len(results["fast"].times) == 10


def test_long_timing_is_announced_with_its_estimate(monkeypatch, clock):
    monkeypatch.setattr("nca_lab.bench.measure.LONG_SECONDS", 0.1)
    messages, log = [], []
    measure(
        {"slow": recording(log, "slow", seconds=0.06, clock=clock), "fast": recording(log, "fast", clock=clock)},
        repeats=3,
        warmup=1,
        memory_budget=float("inf"),
        log=messages.append,
    )
    estimates = [m for m in messages if "timed steps of about" in m]
    assert len(estimates) == 1 and estimates[0].startswith("  slow: 3 timed steps") and "--max-seconds" in estimates[0]


def test_repeated_compiles_clear_the_caches_alternate_the_order_and_report_medians(monkeypatch):
    clears, messages = [], []
    monkeypatch.setattr(jax, "clear_caches", lambda: clears.append(len(messages)))
    step = jax.jit(lambda x: x * 2)
    x = jnp.ones((8,))

    def jitted(name):
        return Workload(call=lambda i: step(x), trace=lambda: step.trace(x), note=name)

    def broken():
        raise RuntimeError("cannot lower")

    workloads = {"a": jitted("a"), "b": jitted("b"), "eager": recording([], "eager"), "bad": Workload(None, broken)}
    results = measure(
        workloads, repeats=2, warmup=1, memory_budget=float("inf"), compile_repeats=3, log=messages.append
    )
    compiling = [m.strip() for m in messages if "compiling" in m]
    assert compiling == [
        "a: compiling (1/3)", "b: compiling (1/3)", "bad: compiling (1/3)",
        "b: compiling (2/3)", "a: compiling (2/3)",
        "a: compiling (3/3)", "b: compiling (3/3)",
    ]  # fmt: skip
    assert clears == [0, 3, 5]  # before each round
    for name in "ab":
        result = results[name]
        assert len(result.compile_each) == len(result.lower_each) == 3 and result.status == "ok"
        assert result.compile_s == sorted(result.compile_each)[1] and result.lower_s == sorted(result.lower_each)[1]
        assert len(result.times) == 2 and result.plan_bytes > 0
    assert (results["bad"].status, results["bad"].reason) == ("failed", "RuntimeError: cannot lower")
    assert results["eager"].compile_each == [] and results["eager"].compile_s == 0 and len(results["eager"].times) == 2


def test_one_compile_leaves_the_caches_alone(monkeypatch):
    monkeypatch.setattr(jax, "clear_caches", lambda: pytest.fail("caches cleared for a single compile"))
    step = jax.jit(lambda x: x + 1)
    x = jnp.ones((4,))
    work = Workload(call=lambda i: step(x), trace=lambda: step.trace(x))
    result = measure({"a": work}, repeats=1, warmup=1, memory_budget=float("inf"))["a"]
    assert result.compile_each == [result.compile_s] and result.lower_each == [result.lower_s]
