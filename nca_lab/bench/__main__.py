"""``python -m nca_lab.bench``: time nca_lab's NCA training and rollouts against peers (CAX, PyTorch), print a table.

    python -m nca_lab.bench                                  # every suite, nca_lab only
    python -m nca_lab.bench --suite growing --peer cax --json bench.json
    python -m nca_lab.bench --suite growing diffusing --peer cax torch
    python -m nca_lab.bench --suite growing rollout --steps 16 --repeats 30
    python -m nca_lab.bench --suite growing --kernel xla pallas --peer cax   # both of nca_lab's paths
    python -m nca_lab.bench --suite growing --peer cax --compile-repeats 5  # compile times you can compare

On a CPU, rollouts are 8 CA steps long unless ``--steps`` says otherwise (full-length
rollouts take minutes per step there); the table and the records say how long they were.
Stopped by Ctrl-C or SIGTERM, it prints and writes what it measured so far, then exits 143.
"""

import argparse
import functools
import importlib
import math
import os
import signal
import sys
import tempfile
from pathlib import Path

from nca_lab.runtime import STOPPED_BY_SIGNAL, on_stop, stop_on_signals

if __name__ == "__main__":
    stop_on_signals(STOPPED_BY_SIGNAL)  # before JAX loads, which takes seconds

import jax  # noqa: E402

from nca_lab.bench import nca_lab_impl  # noqa: E402
from nca_lab.bench.measure import Measurement, first_line, measure  # noqa: E402
from nca_lab.bench.report import LEGEND, device, record, table, versions, write_json  # noqa: E402
from nca_lab.bench.suites import CPU_STEPS, SUITES, cases  # noqa: E402
from nca_lab.cli_args import ArgumentParser  # noqa: E402
from nca_lab.log.manifest import git_state  # noqa: E402

DESCRIPTION = "Time nca_lab's NCA training and rollouts against peers (CAX, PyTorch) and print a table."

#: Peer implementations by ``--peer`` name; imported only when asked for (optional packages).
PEERS = {"cax": "nca_lab.bench.cax_impl", "torch": "nca_lab.bench.torch_impl"}
#: nca_lab's step implementations (``NCA(kernel=...)``).
KERNELS = ("xla", "pallas")


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


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line, its values checked (a bad one is one ``error:`` line, exit status 2)."""
    parser = ArgumentParser(prog="python -m nca_lab.bench", description=DESCRIPTION)
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
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation, at least 1 (default 2)")
    parser.add_argument("--memory-budget-gb", type=float, help="skip plans above this (default: 75%% of memory)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="time an implementation fewer times (at least 3) if its steps would take longer",
    )
    parser.add_argument(
        "--kernel",
        nargs="+",
        choices=list(KERNELS),
        default=["xla"],
        help="nca_lab's step: xla (default), pallas (the fused kernels, interpreted off a GPU), or both, "
        "each against the same peer runs",
    )
    parser.add_argument("--unroll", type=int, default=1, help="nca_lab's CA steps per scan iteration (default 1)")
    parser.add_argument(
        "--compile-repeats",
        type=int,
        default=1,
        metavar="N",
        help="compile each implementation N times from cold, in alternating order, and report the medians "
        "(default 1: one compile varies by tens of percent on a shared machine)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the records as a JSON list")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps <= 0:
        parser.error("--steps must be positive")
    if args.unroll <= 0:
        parser.error("--unroll must be positive")
    if args.repeats <= 0:
        parser.error("--repeats must be positive")
    if args.compile_repeats <= 0:
        parser.error("--compile-repeats must be positive")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first call after compiling measures memory)")
    if args.memory_budget_gb is not None and not args.memory_budget_gb > 0:
        parser.error("--memory-budget-gb must be positive")
    if args.max_seconds is not None and not (args.max_seconds > 0 and math.isfinite(args.max_seconds)):
        parser.error("--max-seconds must be a positive number of seconds")
    if args.json:
        problem = unwritable(Path(args.json))  # before the timing, not after it
        if problem:
            parser.error(f"--json {args.json}: {problem}")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the process exit status."""
    parser, args = parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)  # compile times must be cold
    on_cpu = jax.default_backend() == "cpu"
    steps = args.steps or (CPU_STEPS if on_cpu else None)
    try:
        selected = cases(args.suite, steps)
    except ValueError as exc:
        parser.error(str(exc))
    if "torch" in args.peer and not on_cpu:
        parser.error("--peer torch is an eager PyTorch NCA on the CPU: compare with it on a CPU machine")
    kernels = list(dict.fromkeys(args.kernel))
    ours = {("nca_lab" if len(kernels) == 1 else f"nca_lab ({kernel})"): kernel for kernel in kernels}
    builders = {label: functools.partial(nca_lab_impl.build, kernel=k, unroll=args.unroll) for label, k in ours.items()}
    for peer in args.peer:
        try:
            builders[peer] = importlib.import_module(PEERS[peer]).build
        except ImportError as exc:
            parser.error(str(exc))
    budget = _budget_bytes() if args.memory_budget_gb is None else args.memory_budget_gb * 2**30
    # XLA_FLAGS change XLA's programs, and so the times: every record says which were set.
    env = {"device": device(), "versions": versions(), "xla_flags": os.environ.get("XLA_FLAGS", ""), **git_state()}
    env.update(unroll=args.unroll, warmup=args.warmup, compile_repeats=args.compile_repeats)
    # a record's ``repeats`` are the steps timed, which --max-seconds may cut below those asked
    env.update(repeats_asked=args.repeats, max_seconds=args.max_seconds, memory_budget_bytes=budget)
    print(f"device: {env['device']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
    if env["xla_flags"]:
        print(f"XLA_FLAGS: {env['xla_flags']}")
    if on_cpu and args.steps is None:
        own = ", ".join(f"{name} {SUITES[name][0].steps}" for name in SUITES)
        print(f"CPU: rollouts shortened to {CPU_STEPS} CA steps (the suites' own: {own}; --steps N sets them)")

    records, nca_lab_failed = [], []

    def report() -> None:
        """Print the table and write the records: at the end, or when a signal stops the run."""
        print("\n" + table(records) + "\n\n" + LEGEND, flush=True)
        if args.json:
            try:
                write_json(records, args.json)
            except OSError as err:
                print(f"error: cannot write {args.json} ({err.strerror})", file=sys.stderr)
                return
            print(f"\nwrote {len(records)} records to {args.json}", flush=True)

    previous = stop_on_signals(STOPPED_BY_SIGNAL)
    settings = {
        "repeats": args.repeats,
        "warmup": args.warmup,
        "memory_budget": budget,
        "max_seconds": args.max_seconds,
        "compile_repeats": args.compile_repeats,
    }
    try:
        with on_stop(lambda: records and report()):  # a signal prints and writes what was measured
            for case in selected:
                shape = f"{case.steps} steps, C={case.channels}, hidden {case.hidden}"
                print(f"{case.suite} {case.name}: {case.kind}, {shape}")
                case_records = run_case(case, builders, ours, settings, env)
                records.extend(case_records)
                if any(r["impl"] == "nca_lab" and r["status"] in ("failed", "not_built") for r in case_records):
                    nca_lab_failed.append(f"{case.suite} {case.name}")
    finally:  # a caller from Python gets its own handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    report()
    if nca_lab_failed:
        print(f"error: nca_lab failed on {', '.join(nca_lab_failed)} (see the table)", file=sys.stderr)
        return 1
    if not any(r["impl"] == "nca_lab" and r["status"] == "ok" for r in records):
        print("error: no nca_lab case was measured (see the table)", file=sys.stderr)
        return 1
    return 0


def run_case(case, builders: dict, ours: dict[str, str], settings: dict, env: dict) -> list[dict]:
    """Build and measure every implementation of ``case``: their records, one that could not be
    built among them. ``ours`` maps nca_lab's labels to their kernels; ``settings`` are
    :func:`measure`'s."""
    workloads, failed = {}, {}
    kernels = {label: nca_lab_impl.kernel_of(case, kernel) for label, kernel in ours.items()}  # those that run
    for label, build in builders.items():
        if label in ours and kernels[label] != ours[label] and len(ours) > 1:  # the xla row runs it already
            print(f"  {label}: not run (the fused kernels compute the sobel perceive only)")
            continue
        try:
            workloads[label] = build(case)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other implementations
            failed[label] = first_line(exc)
    results = measure(workloads, **settings)
    measured = [(label, work.note, results[label]) for label, work in workloads.items()]
    for label, reason in failed.items():
        print(f"  {label}: could not build: {reason}", file=sys.stderr)
        measured.append((label, "", Measurement([], math.nan, None, None, "not_built", reason)))
    return [
        record(case, "nca_lab" if label in ours else label, note, measurement, {**env, "kernel": kernels.get(label)})
        for label, note, measurement in measured
    ]


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, or ``None``: tried with a temporary file beside it."""
    if path.is_dir():
        return "is a directory"
    parent = path.resolve().parent
    if not parent.is_dir():
        return f"no such directory {parent}"
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".nca_lab_bench_"):
            pass
    except OSError as err:
        return f"cannot write in {parent} ({err.strerror})"
    return None


if __name__ == "__main__":
    sys.exit(main())
