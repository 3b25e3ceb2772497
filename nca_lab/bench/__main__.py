"""``python -m nca_lab.bench``: time nca_lab's NCA training and rollouts against peers (CAX, PyTorch), print a table.

    python -m nca_lab.bench                                  # every suite, nca_lab only
    python -m nca_lab.bench --suite growing --peer cax --json bench.json
    python -m nca_lab.bench --suite growing diffusing --peer cax torch
    python -m nca_lab.bench --suite growing rollout --steps 16 --repeats 30

On a CPU, rollouts are 8 CA steps long unless ``--steps`` says otherwise (full-length
rollouts take minutes per step there); the table and the records say how long they were.
"""

import argparse
import functools
import importlib
import sys
from pathlib import Path

import jax

from nca_lab.bench import nca_lab_impl
from nca_lab.bench.measure import measure
from nca_lab.bench.report import device, record, table, versions, write_json
from nca_lab.bench.suites import CPU_STEPS, SUITES, cases

#: Peer implementations by ``--peer`` name; imported only when asked for (optional packages).
PEERS = {"cax": "nca_lab.bench.cax_impl", "torch": "nca_lab.bench.torch_impl"}


def _budget_bytes(fraction: float = 0.75) -> float:
    """A memory budget: part of the accelerator's memory, or of the machine's available RAM."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return fraction * stats["bytes_limit"]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return fraction * info["MemAvailable"]
    except (OSError, KeyError):
        return float("inf")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m nca_lab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", default=list(SUITES), metavar="NAME", help=f"of {', '.join(SUITES)}")
    parser.add_argument(
        "--peer",
        nargs="+",
        choices=list(PEERS),
        default=[],
        help="also run CAX (the 'bench' extra) and/or a plain eager PyTorch NCA (pip install torch)",
    )
    parser.add_argument("--steps", type=int, help=f"CA steps per rollout (default: the suite's; {CPU_STEPS} on CPU)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per implementation (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation (default 2)")
    parser.add_argument("--memory-budget-gb", type=float, help="skip plans above this (default: 75%% of memory)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="time an implementation fewer times (at least 3) if its steps would take longer",
    )
    parser.add_argument(
        "--kernel",
        choices=["xla", "pallas"],
        default="xla",
        help="nca_lab's step: xla (default) or pallas, the fused kernels (interpreted off a GPU)",
    )
    parser.add_argument("--unroll", type=int, default=1, help="nca_lab's CA steps per scan iteration (default 1)")
    parser.add_argument("--json", metavar="FILE", help="write the records as a JSON list")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps <= 0:
        parser.error("--steps must be positive")
    if args.unroll <= 0:
        parser.error("--unroll must be positive")
    if args.repeats <= 0 or args.warmup < 0:
        parser.error("--repeats must be positive and --warmup non-negative")
    if args.memory_budget_gb is not None and not args.memory_budget_gb > 0:
        parser.error("--memory-budget-gb must be positive")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: no such directory {Path(args.json).resolve().parent}")  # before the timing

    jax.config.update("jax_enable_compilation_cache", False)  # compile times must be cold
    on_cpu = jax.default_backend() == "cpu"
    steps = args.steps or (CPU_STEPS if on_cpu else None)
    try:
        selected = cases(args.suite, steps)
    except ValueError as exc:
        parser.error(str(exc))
    if "torch" in args.peer and not on_cpu:
        parser.error("--peer torch is an eager PyTorch NCA on the CPU: compare with it on a CPU machine")
    builders = {"nca_lab": functools.partial(nca_lab_impl.build, kernel=args.kernel, unroll=args.unroll)}
    for peer in args.peer:
        try:
            builders[peer] = importlib.import_module(PEERS[peer]).build
        except ImportError as exc:
            parser.error(str(exc))
    budget = _budget_bytes() if args.memory_budget_gb is None else args.memory_budget_gb * 2**30
    env = {"device": device(), "versions": versions()}
    print(f"device: {env['device']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
    if on_cpu and args.steps is None:
        print(f"CPU: rollouts shortened to {CPU_STEPS} CA steps (the suites' own lengths: --steps N)")

    records, nca_lab_failed = [], []
    for case in selected:
        print(f"{case.suite} {case.name}: {case.kind}, {case.steps} steps, C={case.channels}, hidden {case.hidden}")
        workloads, failed = {}, {}
        for impl, build in builders.items():
            try:
                workloads[impl] = build(case)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other implementations
                failed[impl] = f"{type(exc).__name__}: {exc}"[:200]
        results = measure(
            workloads, repeats=args.repeats, warmup=args.warmup, memory_budget=budget, max_seconds=args.max_seconds
        )
        for impl, work in workloads.items():
            records.append(record(case, impl, work.note, results[impl], env))
        for impl, reason in failed.items():
            print(f"  {impl}: could not build: {reason}", file=sys.stderr)
        if "nca_lab" in failed or results.get("nca_lab") is not None and results["nca_lab"].status == "failed":
            nca_lab_failed.append(f"{case.suite} {case.name}")
        del workloads, results
    print()
    print(table(records))
    if args.json:
        write_json(records, args.json)
        print(f"\nwrote {len(records)} records to {args.json}")
    if nca_lab_failed:
        print(f"error: nca_lab failed on {', '.join(nca_lab_failed)} (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
