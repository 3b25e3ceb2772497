"""Aggregate the perceive-ablation sweep into a markdown table and a PNG plot.

Reads only run dirs (no network): each job's `config_resolved.yaml`, `metrics.jsonl` and
`summary.json`. Usage:

    python experiments/perceive_ablation/aggregate.py outputs/sweeps/ablation_* --out experiments/perceive_ablation
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def short_name(target: str) -> str:
    return target.rsplit(".", 1)[-1].removesuffix("Perceive").removesuffix("Task").lower()


def load_runs(sweep_dirs: list[Path]) -> list[dict]:
    runs = []
    for summary_path in sorted(p for d in sweep_dirs for p in d.rglob("summary.json")):
        run_dir = summary_path.parent
        config = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        runs.append(
            {
                "dir": run_dir,
                "settings": settings(config),
                "task": short_name(config["task"]["_target_"]),
                "perceive": short_name(config["perceive"]["_target_"]),
                "seed": config["seed"],
                "summary": json.loads(summary_path.read_text()),
                "curve": [(r["step"], r["loss"]) for r in records if "loss" in r],
                # the first line's speed held the compile (nca_lab no longer reports it; older runs did)
                "steps_per_s": [r["steps_per_s"] for r in records[1:] if "steps_per_s" in r],
            }
        )
    return runs


def settings(config: dict, prefix: str = "") -> dict:
    """A run's config flattened to ``{"trainer.steps": 400, ...}``, without what may differ
    between the seeds of one comparison (the seed, logging, the progress bar)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in ("seed", "run_name", "trainer.progress") or name.startswith("logger"):
            continue
        flat |= settings(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return flat


def check_groups(runs: list[dict]) -> None:
    """Every (task, perceive) group must differ in its seeds only: mean ± std over runs of other
    settings (a re-run of the sweep with another ``trainer.steps`` adds such runs) means nothing."""
    for task, perceive in sorted({(r["task"], r["perceive"]) for r in runs}):
        first, *others = [r for r in runs if (r["task"], r["perceive"]) == (task, perceive)]
        for run in others:
            keys = sorted(k for k in first["settings"].keys() | run["settings"].keys()
                          if first["settings"].get(k) != run["settings"].get(k))  # fmt: skip
            if keys:
                k = keys[0]
                raise SystemExit(
                    f"error: {task}/{perceive}: {first['dir']} and {run['dir']} differ in more than the seed "
                    f"({k}: {first['settings'].get(k)!r} vs {run['settings'].get(k)!r}); aggregate runs of one setting"
                )


def stat(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {spread:.2g}"


def table(runs: list[dict]) -> str:
    """One markdown table per task: mean ± std over seeds of each metric, per perceive."""
    out = []
    for task in sorted({r["task"] for r in runs}):
        task_runs = [r for r in runs if r["task"] == task]
        metrics = sorted({k for r in task_runs for k in r["summary"] if k.startswith("eval/")})
        out += [
            f"### {task}",
            "",
            "| perceive | seeds | final train loss | " + " | ".join(metrics) + " | steps/s |",
            "|---|---|---|" + "---|" * len(metrics) + "---|",
        ]
        for perceive in sorted({r["perceive"] for r in task_runs}):
            group = [r for r in task_runs if r["perceive"] == perceive]
            cells = [stat([r["summary"].get("loss") for r in group])]
            cells += [stat([r["summary"].get(m) for r in group]) for m in metrics]
            cells.append(stat([statistics.median(r["steps_per_s"]) for r in group if r["steps_per_s"]]))
            out.append(f"| {perceive} | {len(group)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(runs: list[dict], path: Path) -> None:
    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    colours = {}
    for ax, task in zip(axes[0], tasks, strict=True):
        for run in sorted((r for r in runs if r["task"] == task), key=lambda r: (r["perceive"], r["seed"])):
            colour = colours.setdefault(run["perceive"], f"C{len(colours)}")
            steps, losses = zip(*run["curve"], strict=True)
            label = (
                run["perceive"]
                if run["seed"] == min(r["seed"] for r in runs if r["perceive"] == run["perceive"])
                else None
            )
            ax.plot(steps, losses, color=colour, alpha=0.7, label=label)
        ax.set(title=task, xlabel="step", ylabel="training loss", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep dirs (searched recursively for finished runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    runs = load_runs(args.sweeps)
    if not runs:
        raise SystemExit("error: no finished runs (summary.json) under " + ", ".join(map(str, args.sweeps)))
    check_groups(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table(runs))
    plot(runs, args.out / "loss_curves.png")
    print(table(runs))


if __name__ == "__main__":
    main()
