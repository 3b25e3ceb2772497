"""The first call's cost of the growing train step on a CPU: nca_lab with and without
active-cell compaction, against CAX, in one process.

    python experiments/bench/cpu_compile.py [--rounds 7]

A cold compile on a shared 2-core machine varies by tens of percent from one minute to the
next, so the three are compiled in the same rounds (:func:`~nca_lab.bench.measure.compile_all`:
JAX's caches cleared before each round, the order reversed every other round). Prints, for
each, the median time to trace and lower the jitted step and to compile it.
"""

import argparse
from dataclasses import replace

import jax

from nca_lab.bench import cax_impl, nca_lab_impl
from nca_lab.bench.measure import compile_all
from nca_lab.bench.suites import CPU_STEPS, SUITES
from nca_lab.nca import NCA


def nca_lab_workload(compact_cells: bool):
    """The bench's nca_lab growing workload with ``compact_cells`` set."""
    nca_init = NCA.__init__
    NCA.__init__ = lambda self, *a, **kw: nca_init(self, *a, **{**kw, "compact_cells": compact_cells})
    try:
        return nca_lab_impl.build(CASE)
    finally:
        NCA.__init__ = nca_init


CASE = replace(SUITES["growing"][0], steps=CPU_STEPS)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    print(jax.devices(), flush=True)
    workloads = {"nca_lab compacted": nca_lab_workload(True), "nca_lab dense": nca_lab_workload(False)}
    workloads["cax"] = cax_impl.build(CASE)
    for name, result in compile_all(workloads, repeats=args.rounds, log=lambda _: None).items():
        each = ", ".join(f"{s:.2f}" for s in result.compile_each)
        print(
            f"{name}: lower {result.lower_s:.2f} s + compile {result.compile_s:.2f} s = "
            f"{result.lower_s + result.compile_s:.2f} s (compiles: {each})",
            flush=True,
        )
