"""Where a benchmark case's GPU time goes: a JAX profiler trace of a few calls, summarised by kernel.

    python experiments/gpu/profile.py --suite growing --kernel xla pallas --out DIR

For each kernel choice: compiles one of the suite's cases (``nca_lab.bench``'s workload), runs
two untimed calls, then traces ``--calls`` calls and prints, per call, the wall time, the time
the GPU was busy (the union of its kernels' and copies' intervals), how many kernels ran, and
the kernels that took most of the time. The wall time minus the busy time is what the GPU
waited for: launches, the scan's loop, the host. The Perfetto trace is copied to
``DIR/<suite>_<case>_<kernel>.trace.json.gz`` (open it at ui.perfetto.dev).
"""

import argparse
import gzip
import json
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import jax

from nca_lab.bench import nca_lab_impl
from nca_lab.bench.suites import SUITES


def device_events(trace: dict) -> list[dict]:
    """The complete ('X') events on the device's streams (kernels, copies).

    A GPU's process also has derived lines ("XLA Ops", "XLA Modules", ...) that repeat the
    streams' time per HLO op: where stream lines exist, only those count.
    """
    events = trace["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    devices = {e["pid"] for e in meta if e.get("name") == "process_name" and "/device:" in e["args"]["name"]}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e.get("name") == "thread_name"}
    streams = {k for k, name in threads.items() if k[0] in devices and name.startswith("Stream")}
    print(f"  device lines: {sorted({name for k, name in threads.items() if k[0] in devices})}")
    return [
        e
        for e in events
        if e.get("ph") == "X"
        and "dur" in e
        and e["pid"] in devices
        and (not streams or (e["pid"], e.get("tid")) in streams)
    ]


def busy_us(events: list[dict]) -> float:
    """Microseconds covered by at least one event."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarise(trace: dict, calls: int, wall_ms: float, top: int) -> None:
    events = device_events(trace)
    if not events:
        print("  no device events in the trace (no GPU, or the profiler could not read it)")
        return
    by_name = defaultdict(lambda: [0, 0.0])
    for e in events:
        by_name[e["name"]][0] += 1
        by_name[e["name"]][1] += e["dur"]
    total = sum(d for _, d in by_name.values())
    print(
        f"  per call: wall {wall_ms:.2f} ms, device busy {busy_us(events) / calls / 1e3:.2f} ms, "
        f"{len(events) / calls:.0f} device events, {total / len(events):.1f} us each on average"
    )
    for name, (count, dur) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {dur / calls / 1e3:8.3f} ms {count / calls:7.0f}x  {100 * dur / total:5.1f}%  {name[:110]}")


def profile(case, kernel: str, calls: int, out: Path, top: int) -> None:
    work = nca_lab_impl.build(case, kernel=kernel)
    print(f"{case.suite} {case.name} x{case.steps}, {kernel}: {work.note}", flush=True)
    for i in range(2):
        jax.block_until_ready(work.call(i))
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            start = time.perf_counter()
            for i in range(calls):
                jax.block_until_ready(work.call(2 + i))
            wall_ms = 1e3 * (time.perf_counter() - start) / calls
        path = next(Path(logdir).rglob("perfetto_trace.json.gz"))
        with gzip.open(path) as f:
            summarise(json.load(f), calls, wall_ms, top)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / f"{case.suite}_{case.name}_{kernel}.trace.json.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="growing", choices=sorted(SUITES))
    parser.add_argument("--case", type=int, default=0, help="which of the suite's cases (0: the first)")
    parser.add_argument("--kernel", nargs="+", default=["xla", "pallas"], choices=["xla", "pallas"])
    parser.add_argument("--steps", type=int, help="CA steps per rollout (default: the suite's)")
    parser.add_argument("--calls", type=int, default=3, help="traced calls")
    parser.add_argument("--top", type=int, default=15, help="kernels listed")
    parser.add_argument("--out", type=Path, default=Path("outputs/profile"))
    args = parser.parse_args()
    case = SUITES[args.suite][args.case]
    if args.steps:
        case = replace(case, steps=args.steps)
    print(jax.devices(), flush=True)
    for kernel in args.kernel:
        profile(case, kernel, args.calls, args.out, args.top)


if __name__ == "__main__":
    main()
