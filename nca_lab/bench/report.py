"""The benchmark's records, table and environment description."""

import json
import math
import os
import platform
from collections import Counter
from pathlib import Path

import jax

from nca_lab.atomic import write_text_atomically
from nca_lab.bench.measure import Measurement, summary
from nca_lab.bench.suites import Case, suite_steps
from nca_lab.log.manifest import package_version

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "nca_lab", "cax", "torch")
#: JAX's GPU plugins (CUDA 12 or 13), recorded where installed: they hold the XLA:GPU that ran.
GPU_PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt")


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that matter (``None`` if absent)."""
    plugins = {name: version for name in GPU_PLUGINS if (version := package_version(name)) is not None}
    return {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}, **plugins}


def device() -> str:
    """The device the run used, e.g. ``"gpu: NVIDIA H100 80GB HBM3"`` or ``"cpu: <model>, 2 cores"``."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.platform}: {dev.device_kind} x{jax.device_count()}"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {os.cpu_count()} cores"


def record(case: Case, impl: str, note: str, measurement: Measurement, env: dict) -> dict:
    """One JSON record: timings, compile time, peak memory, throughput, device, versions, sizes, status.

    ``env`` holds what is the same for every record of a run (device, versions, git state,
    the command's settings).
    """
    times = summary(measurement)
    peak, source = measurement.peak
    median_s = times["median_ms"] / 1e3
    return {
        "suite": case.suite,
        "case": case.name,
        "impl": impl,
        "note": note,
        "kind": case.kind,
        "batch": case.batch,
        "grid": case.grid,
        "steps": case.steps,
        "suite_steps": suite_steps(case),
        "channels": case.channels,
        "hidden": case.hidden,
        "status": measurement.status,
        "reason": measurement.reason,
        "repeats": len(measurement.times),
        **times,
        "compile_s": measurement.compile_s,
        "lower_s": measurement.lower_s,
        "compile_s_each": measurement.compile_each,
        "lower_s_each": measurement.lower_each,
        "peak_bytes": peak,
        "peak_source": source,
        "xla_plan_bytes": measurement.plan_bytes,
        "cell_steps_per_s": case.cell_steps / median_s if median_s > 0 else float("nan"),
        **env,
    }


def write_json(records: list[dict], path: Path) -> None:
    """Write ``records`` as a JSON list (NaN as ``null``)."""
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
    write_text_atomically(path, json.dumps(clean, indent=2) + "\n")


#: What the table's columns mean, printed under it.
LEGEND = """\
n: timed steps per implementation (fewer than --repeats where --max-seconds cut them short)
lower s, compile s: tracing and lowering the jitted step, then XLA compiling it, before the first
  call (a first call pays both); medians over --compile-repeats cold rounds
peer/nca_lab: the peer's median time over nca_lab's on the same case (the fastest of nca_lab's
  kernels, where --kernel named several): above 1, nca_lab is faster
peak MiB: on a CPU, how much the process's resident memory grew in the first call (rough: memory
  that earlier calls freed is reused); elsewhere XLA's planned bytes for one call, as for rows
  marked (plan), which did not run"""


def table(records: list[dict]) -> str:
    """A markdown table, columns padded to line up, with each peer's time divided by nca_lab's on
    the same case (its fastest kernel's; rows name the kernel where a case has several)."""
    columns = ["suite", "case", "impl", "steps", "n", "median ms", "min ms", "max ms", "lower s", "compile s"]
    columns += ["peak MiB", "Mcell-steps/s", "peer/nca_lab", "how"]
    ours = [r for r in records if r["impl"] == "nca_lab"]
    variants = Counter((r["suite"], r["case"]) for r in ours)
    fastest = {}
    for r in sorted((r for r in ours if r["status"] == "ok"), key=lambda r: r["median_ms"]):
        fastest.setdefault((r["suite"], r["case"]), r)
    rows = [columns]
    for r in records:
        ok = r["status"] == "ok"
        base = fastest.get((r["suite"], r["case"]))
        ratio = f"{r['median_ms'] / base['median_ms']:.2f}x" if ok and r["impl"] != "nca_lab" and base else ""
        impl = r["impl"]
        if impl == "nca_lab" and variants[(r["suite"], r["case"])] > 1:
            impl += f" ({r.get('kernel')})"
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "-"
        if ok:
            timing = [f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}"]
            rate = f"{r['cell_steps_per_s'] / 1e6:.3g}"
        else:
            timing, rate = [r["status"], "", ""], ""
            peak += " (plan)" if r["peak_bytes"] is not None else ""
        how = "; ".join(part for part in (r["note"], r["reason"]) if part)
        # a key missing (records from before lower_s) or null (NaN in JSON): not measured
        compiling = [
            "-" if r.get(key) is None or math.isnan(r[key]) else f"{r[key]:.2f}" for key in ("lower_s", "compile_s")
        ]
        rows.append(
            [r["suite"], r["case"], impl, str(r["steps"]), str(r["repeats"]), *timing, *compiling, peak, rate]
            + [ratio, how]
        )
    widths = [max(3, *(len(row[i]) for row in rows)) for i in range(len(columns) - 1)] + [3]  # "how" unpadded
    lines = ["| " + " | ".join(map(str.ljust, row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
