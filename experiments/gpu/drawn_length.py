"""Does a drawn rollout length cost host syncs on a GPU? The trainer's train step against the bench's.

    python experiments/gpu/drawn_length.py [--kernel xla pallas] [--repeats N]

The harness times train steps of a fixed length (the growing case: 96 CA steps). The trainer
draws each batch's length from a range (``trainer.rollout_steps``, 64-96 in the presets), and
the XLA path skips the steps past it with a ``lax.cond`` on each step past the range's lower
bound (``NCA.rollout``'s ``min_active_steps``: here 32 of 96). Run from the host, XLA:GPU's
conditional copies its predicate to the host and blocks until it arrives (``ConditionalThunk``),
at each of those steps forward and backward; captured in a command buffer (a CUDA graph
conditional node: XLA's default where driver and runtime are CUDA >= 12.3, if everything around
it in the loop body can be captured too) it costs no sync. Which one a GPU gets, a compile
without the GPU (``aot.py``) cannot tell. The fused rollout's kernels skip steps themselves in
a loop of static length.

For each kernel this times the growing case's train step (8 x 72x72, pool, clipping and Adam)
with the length fixed at 96, fixed at 80 (the mean of a 64-96 draw), and drawn from 64-96,
interleaved in one run (``nca_lab.bench.measure``). A drawn step slower than the fixed-80 one
is what the syncs cost; the fixed-96 step bounds the alternative, running every step and
discarding the ones past the drawn length (no ``lax.cond``): the XLA path should skip that way
on a GPU if the drawn step is slower than the fixed-96 one.
"""

import argparse
import statistics

import jax

from nca_lab.bench import nca_lab_impl
from nca_lab.bench.measure import measure
from nca_lab.bench.suites import SUITES

LENGTHS = {"fixed 96": (96, 96), "fixed 80": (80, 80), "drawn 64-96": (64, 96)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", nargs="+", default=["xla", "pallas"], choices=["xla", "pallas"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(jax.devices(), flush=True)
    for kernel in args.kernel:
        case = SUITES["growing"][0]
        workloads = {
            name: nca_lab_impl.build(case, kernel=kernel, rollout_steps=steps) for name, steps in LENGTHS.items()
        }
        results = measure(workloads, repeats=args.repeats, warmup=2, memory_budget=float("inf"))
        for name, result in results.items():
            if result.times:
                median = 1e3 * statistics.median(result.times)
                print(f"{kernel:6s} {name:12s} {median:8.2f} ms per train step", flush=True)
            else:
                print(f"{kernel:6s} {name:12s} {result.status}: {result.reason}", flush=True)


if __name__ == "__main__":
    main()
