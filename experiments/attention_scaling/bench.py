"""Time and memory of local 3x3 attention against dense masked attention, by grid size.

Compares, with the same weights and the same function (``padding=None``, the masked form):

* ``local``: :class:`nca_lab.perceive.attention.AttentionPerceive`, 9 shifted slices;
* ``dense``: CAX's formulation (``examples/48_attention_nca``): ``H * W`` tokens, an
  ``(HW) x (HW)`` score matrix per head, masked to the 3x3 neighbourhood (ViTCA gathers the 9
  neighbours with one-hot convolutions instead, linear in cells like ``local``);
* ``sobel``: the fixed Sobel perceive, as a reference for the cost of a plain NCA.

Each perceive feeds the residual update of ``conf/update/residual.yaml``. For every grid,
a fresh worker process compiles a forward rollout (``forward``) or a full training step
(``train``: rollout, backpropagation, Adam) and reports the time per CA step and memory:
``xla`` is what the compiled program allocates (arguments, outputs and temporaries, from
``Compiled.memory_analysis``), ``peak`` the growth of the process's resident set during the
first run of the compiled program. A configuration whose compiled plan exceeds ``--memory-budget-gb``
is not run (its planned size is still reported), and a variant that gets slower than
``--max-step-s`` per CA step is not run on larger grids.

    python experiments/attention_scaling/bench.py            # writes results.md beside this file
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nca_lab.nca import NCA
from nca_lab.perceive.attention import AttentionPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

HERE = Path(__file__).resolve().parent
VARIANTS = ("local", "dense", "sobel")
MODES = ("forward", "train")
CHANNELS, PERCEPTION, HEADS, HIDDEN = 16, 48, 4, 128


class DenseAttentionPerceive(AttentionPerceive):
    """The dense masked-attention version of :class:`AttentionPerceive` (same parameters, ``padding=None``)."""

    def __call__(self, state: jnp.ndarray) -> jnp.ndarray:
        """Perception of ``(..., H, W, C)`` through an ``(HW) x (HW)`` score matrix per head."""
        *batch, height, width, _ = state.shape
        n, heads, size = height * width, self.num_heads, self.head_size
        tokens = self.embed(state).reshape(*batch, n, self.out_features)
        q, k, v = (t.reshape(*batch, n, heads, size) for t in jnp.split(self.qkv(tokens), 3, axis=-1))
        q = q * size**-0.5
        cell = jnp.arange(n)
        rows, cols = cell // width, cell % width
        dr, dc = rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]  # key minus query
        mask = (jnp.abs(dr) <= 1) & (jnp.abs(dc) <= 1)  # the (HW) x (HW) mask
        offset = (dr + 1) * 3 + (dc + 1)
        rel_k = self.key_offsets[...].reshape(9, heads, size)
        rel_v = self.value_offsets[...].reshape(9, heads, size)
        logits = jnp.einsum("...ihd,...jhd->...hij", q, k)
        q_rel = jnp.einsum("...ihd,ohd->...hio", q, rel_k)
        for o in range(9):
            logits = logits + jnp.where(offset == o, q_rel[..., o, None], 0.0)
        weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
        attended = jnp.einsum("...hij,...jhd->...ihd", weights, v)
        per_offset = jnp.stack([jnp.sum(jnp.where(offset == o, weights, 0.0), -1) for o in range(9)], -1)
        attended = attended + jnp.einsum("...hio,ohd->...ihd", per_offset, rel_v)
        out = tokens + self.out(attended.reshape(*batch, n, heads * size))
        return out.reshape(*batch, height, width, self.out_features)


def build_model(variant: str) -> NCA:
    """The NCA of ``variant``; ``local`` and ``dense`` get identical weights."""
    rngs = nnx.Rngs(params=0)
    if variant == "sobel":
        perceive = SobelPerceive(CHANNELS)
    else:
        cls = DenseAttentionPerceive if variant == "dense" else AttentionPerceive
        perceive = cls(CHANNELS, perception_size=PERCEPTION, num_heads=HEADS, padding=None, rngs=rngs)
    update = ResidualUpdate(perceive.out_features, CHANNELS, hidden_sizes=(HIDDEN,), zero_init=False, rngs=rngs)
    return NCA(perceive, update, alive_threshold=None)


def _memory_kib() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))


def worker(variant: str, mode: str, grid: int, batch: int, steps: int, repeats: int, budget: float) -> dict:
    """Compile and (if it fits) run one configuration; return its measurements."""
    graphdef, params = nnx.split(build_model(variant))
    state = 0.1 * jax.random.normal(jax.random.key(1), (batch, grid, grid, CHANNELS))
    keys = jax.random.split(jax.random.key(2), batch)

    def rollout(p, x, k):
        return nnx.merge(graphdef, p).rollout(x, k, steps)[0]

    if mode == "forward":
        fn, args = jax.jit(rollout), (params, state, keys)
    else:
        tx = optax.adam(1e-3)

        def train_step(p, opt_state, x, k):
            loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.square(rollout(p, x, k) - 0.5)))(p)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        fn, args = jax.jit(train_step), (params, tx.init(params), state, keys)
    tick = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - tick
    stats = compiled.memory_analysis()
    planned = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    result = {"variant": variant, "mode": mode, "grid": grid, "compile_s": compile_s}
    result |= {"xla_bytes": planned, "temp_bytes": stats.temp_size_in_bytes}
    if planned > budget * 2**30:
        return {**result, "status": "too_big"}
    # Peak of the first run: later runs may reuse memory the allocator kept from it.
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    rss_before, _ = _memory_kib()
    jax.block_until_ready(compiled(*args))
    _, peak = _memory_kib()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - tick)
    return {**result, "status": "ok", "step_s": min(times) / steps, "peak_bytes": (peak - rss_before) * 1024}


def check_equal(grid: int = 28) -> float:
    """Largest difference between the local and dense perceptions of one random state."""
    local, dense = (build_model(v).perceive for v in ("local", "dense"))
    state = jax.random.normal(jax.random.key(0), (2, grid, grid, CHANNELS))
    return float(np.max(np.abs(np.asarray(local(state)) - np.asarray(dense(state)))))


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.0f} s"


def _time_cell(res: dict) -> str:
    if res["status"] == "ok":
        return _fmt_time(res["step_s"])
    if res["status"] == "too_big":
        return "does not fit"
    return f"not run ({res['why']})"


def _bytes_cell(res: dict, key: str) -> str:
    return _fmt_bytes(res[key]) if key in res else "-"


def main() -> None:
    """Run every configuration in its own process and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[28, 56, 72, 128, 256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="CA steps per rollout")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the fastest is kept)")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--max-step-s", type=float, default=20.0, help="stop a variant slower than this")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "MODE", "GRID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, mode, grid = args.worker
        out = worker(variant, mode, int(grid), args.batch, args.steps, args.repeats, args.memory_budget_gb)
        print("RESULT " + json.dumps(out))
        return

    results: dict[tuple[str, str, int], dict] = {}
    for mode in MODES:
        for variant in VARIANTS:
            stopped = None
            for grid in args.grids:
                if stopped:
                    results[variant, mode, grid] = {"status": "skipped", "why": stopped}
                    continue
                command = [sys.executable, __file__, "--worker", variant, mode, str(grid)]
                command += ["--batch", str(args.batch), "--steps", str(args.steps), "--repeats", str(args.repeats)]
                command += ["--memory-budget-gb", str(args.memory_budget_gb)]
                env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
                try:
                    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
                    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                    res = json.loads(line[-1][7:]) if line else {"status": "failed", "why": proc.stderr[-300:]}
                except subprocess.TimeoutExpired:
                    res = {"status": "skipped", "why": "over 900 s"}
                results[variant, mode, grid] = res
                print(mode, variant, grid, res, flush=True)
                if res["status"] == "ok" and res["step_s"] > args.max_step_s:
                    stopped = f"{grid}x{grid} took {_fmt_time(res['step_s'])} per step"
                elif res["status"] in ("failed", "skipped"):
                    stopped = f"{grid}x{grid} {res['status']}"
    write_table(args, results, check_equal())


def write_table(args, results, max_diff: float) -> None:
    """Write ``results.md``: one row per grid, columns per variant, for each mode."""
    lines = [
        "# Local vs dense 3x3 attention: time per CA step and memory",
        "",
        f"Generated by `python experiments/attention_scaling/bench.py` on {platform.machine()} CPU "
        f"({os.cpu_count()} cores, shared with other jobs: compare ratios within a table, not across runs).",
        f"State {CHANNELS} channels, perception {PERCEPTION}, {HEADS} heads, update hidden {HIDDEN}; batch "
        f"{args.batch}, rollouts of {args.steps} steps, fastest of {args.repeats} runs; `padding=None` (the masked "
        f"form) for both attention variants. Local and dense perceptions differ by at most {max_diff:.1e} (28x28).",
        "`xla`: bytes the compiled program allocates (arguments + outputs + temporaries); `peak`: growth of the "
        "resident set during its first run; `local temp/cell`: the compiled program's temporaries per cell "
        "(flat when memory is linear in cells).",
        f"Dense runs stop where the compiled plan exceeds {args.memory_budget_gb:g} GiB (the planned size is shown).",
    ]
    for mode in MODES:
        title = "Forward rollout" if mode == "forward" else "Training step (rollout + backprop + Adam)"
        lines += ["", f"## {title}", ""]
        lines += [
            "| grid | cells | local time/step | dense time/step | dense/local | sobel time/step "
            "| local xla | dense xla | local peak | dense peak | local temp/cell |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for grid in args.grids:
            local, dense, sobel = (results[v, mode, grid] for v in VARIANTS)
            ratio = f"{dense['step_s'] / local['step_s']:.1f}x" if dense["status"] == local["status"] == "ok" else "-"
            per_cell = f"{local['temp_bytes'] / grid**2 / args.batch:.0f} B" if "temp_bytes" in local else "-"
            cells = [
                str(grid),
                str(grid * grid),
                _time_cell(local),
                _time_cell(dense),
                ratio,
                _time_cell(sobel),
                _bytes_cell(local, "xla_bytes"),
                _bytes_cell(dense, "xla_bytes"),
                _bytes_cell(local, "peak_bytes"),
                _bytes_cell(dense, "peak_bytes"),
                per_cell,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
