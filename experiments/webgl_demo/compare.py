"""Do models exported by nca_lab grow the same pattern in the article's web demo as in nca_lab?

    python experiments/webgl_demo/compare.py CA_JS MODEL[@STEPS] [MODEL[@STEPS] ...] [--seeds 3]

CA_JS is ``public/ca.js`` of the article's repository (distillpub/post--growing-ca), which
this repository does not copy. Each MODEL (an nca_lab run dir or checkpoint, or a webgl8 or
TF.js JSON) is exported with ``nca_lab.export`` and grown from the seed by the demo's
``createCA`` (``grow_in_demo.mjs``: headless Chromium, software WebGL) and by
``nca_lab.nca.grow`` (the model as loaded, float32), on the grid and for the steps
``nca_lab.grow`` takes by default (or ``@STEPS``), with several seeds each.

The demo keeps its state in 8-bit textures, wraps around the grid's edges and draws its own
fire masks, so the two cannot agree bit for bit. The numbers say how close the final
patterns are, next to how close two nca_lab runs with different seeds are, two demo runs,
and nca_lab runs of the exported (8-bit) weights: the IoU of the living cells (alpha > 0.1)
and the mean squared difference of RGBA (clipped to [0, 1]). Writes ``results.md`` and
``comparison.png`` (per model: nca_lab's final state, then the demo's) into ``--out``.
"""

import argparse
import json
import math
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np

from nca_lab.export import export
from nca_lab.grow import trained_setting
from nca_lab.interop import read_model
from nca_lab.nca import grow
from nca_lab.render import save_png, tile, to_rgb, to_uint8
from nca_lab.tasks.growing import seed_state

HERE = Path(__file__).resolve().parent
#: The demo packs each value v into a byte as atan(v) / (2 atan(10)) + 127/255 (ca.js: createTensor).
PACK_RANGE = 2 * math.atan(10.0)


def demo_state(ca_js: Path, model_json: Path, size: int, steps: int, seed: int) -> tuple[np.ndarray, str]:
    """The demo's state after ``steps`` steps, ``(size, size, 16)`` float32, and the WebGL renderer."""
    command = ["node", str(HERE / "grow_in_demo.mjs"), str(ca_js), str(model_json), str(size), str(steps), str(seed)]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    texture = np.array(result["bytes"], np.uint8).reshape(2 * size, 2 * size, 4)
    values = np.tan((texture / 255.0 - 127.0 / 255.0) * PACK_RANGE)
    tiles = [values[(g // 2) * size : (g // 2 + 1) * size, (g % 2) * size : (g % 2 + 1) * size] for g in range(4)]
    return np.concatenate(tiles, axis=-1).astype(np.float32), result["renderer"]


def living(state: np.ndarray) -> np.ndarray:
    return state[..., 3] > 0.1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((living(a) & living(b)).sum() / max(1, (living(a) | living(b)).sum()))


def rgba_mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.clip(a[..., :4], 0, 1) - np.clip(b[..., :4], 0, 1)) ** 2))


def mean_pairwise(metric, states_a, states_b) -> float:
    """``metric`` averaged over pairs with different seeds (the same seed means nothing across implementations)."""
    values = [metric(a, b) for i, a in enumerate(states_a) for j, b in enumerate(states_b) if i != j]
    return float(np.mean(values))


def compare(ca_js: Path, model_path: str, seeds: int, steps: int | None, work: Path) -> tuple[dict, np.ndarray]:
    """Metrics of one model and its picture row; ``steps`` ``None``: ``nca_lab.grow``'s default."""
    (size, width), default_steps, name = trained_setting(model_path)
    steps = steps or default_steps
    assert size == width and size % 2 == 0, "the demo's seed is one cell only on even square grids"
    exported = work / f"{name}.webgl8.json"
    export(model_path, exported)
    model = read_model(model_path)
    seed_cell = np.argwhere(living(demo_state(ca_js, exported, size, 0, 0)[0]))
    assert len(seed_cell) == 1, seed_cell
    offset = np.array([size // 2, size // 2]) - seed_cell[0]  # the demo seeds (size/2 - 1, size/2 - 1)
    demo, renderer = [], ""
    for seed in range(seeds):
        state, renderer = demo_state(ca_js, exported, size, steps, seed)
        demo.append(np.roll(state, tuple(offset), (0, 1)))  # its grid wraps around: the roll is exact
    start = seed_state((size, size), 16)
    ours, quantised = (
        [np.asarray(grow(m, start, jax.random.key(seed), steps)[0]) for seed in range(seeds)]
        for m in (model, read_model(exported))
    )
    row = {
        "model": model_path,
        "grid": f"{size}x{size}",
        "steps": steps,
        "living cells (nca_lab, demo)": f"{np.mean([living(s).sum() for s in ours]):.0f}, "
        f"{np.mean([living(s).sum() for s in demo]):.0f}",
        "IoU demo vs nca_lab": mean_pairwise(iou, demo, ours),
        "IoU nca_lab vs nca_lab": mean_pairwise(iou, ours, ours),
        "IoU demo vs demo": mean_pairwise(iou, demo, demo),
        "IoU nca_lab 8-bit weights vs nca_lab": mean_pairwise(iou, quantised, ours),
        "MSE demo vs nca_lab": mean_pairwise(rgba_mse, demo, ours),
        "MSE nca_lab vs nca_lab": mean_pairwise(rgba_mse, ours, ours),
        "seed offset": tuple(int(v) for v in offset),
        "renderer": renderer,
    }
    scale = max(1, 160 // size)
    pictures = [to_uint8(to_rgb(state), scale) for state in (ours[0], demo[0])]
    return row, tile(pictures, columns=2)


def write_table(rows: list[dict], path: Path) -> None:
    columns = [key for key in rows[0] if key != "renderer"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[key]:.4g}" if isinstance(row[key], float) else str(row[key]) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    renderers = sorted({row["renderer"] for row in rows})
    path.write_text("\n".join(lines) + f"\n\nWebGL renderer: {', '.join(renderers)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ca_js", type=Path, help="public/ca.js of distillpub/post--growing-ca")
    parser.add_argument(
        "models", nargs="+", help="nca_lab run dirs or checkpoints, webgl8 or TF.js JSON files; @STEPS: CA steps"
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs of each implementation per model (default 3)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.md and comparison.png go")
    args = parser.parse_args()
    rows, pictures = [], []
    with tempfile.TemporaryDirectory() as work:
        for model in args.models:
            path, _, steps = model.partition("@")
            row, picture = compare(args.ca_js, path, args.seeds, int(steps) if steps else None, Path(work))
            print(json.dumps(row), flush=True)
            rows.append(row)
            pictures.append(picture)
    write_table(rows, args.out / "results.md")
    height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    padded = [
        np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in pictures
    ]
    save_png(tile(padded, columns=1), args.out / "comparison.png")


if __name__ == "__main__":
    main()
