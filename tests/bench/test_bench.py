"""The benchmark harness: suite selection, the table, and one real (tiny) run of the CLI.

Nothing here is timed: the harness's numbers are for ``python -m nca_lab.bench``.
"""

import importlib.util
import json
import math
import sys

import pytest

from nca_lab.bench.__main__ import main as bench_main
from nca_lab.bench.report import table
from nca_lab.bench.suites import SUITES, cases

from nca_testing import run_cli

FIELDS = {
    "suite",
    "impl",
    "median_ms",
    "min_ms",
    "max_ms",
    "compile_s",
    "peak_bytes",
    "cell_steps_per_s",
    "device",
    "versions",
}


def test_suites_and_step_override():
    assert set(SUITES) == {"growing", "diffusing", "scaled", "rollout", "attention"}
    growing = cases(["growing"], None)[0]
    assert (growing.batch, growing.grid, growing.steps, growing.channels, growing.hidden) == (8, 72, 96, 16, 128)
    assert growing.padding == 16 and growing.pool == 1024
    rollouts = cases(["rollout"], 4)
    assert [c.batch for c in rollouts] == [8, 256] and all(c.steps == 4 for c in rollouts)
    with pytest.raises(ValueError, match="unknown suite"):
        cases(["nope"], None)


def test_table_divides_the_peer_by_nca_lab():
    base = {
        "suite": "growing",
        "case": "8x72x72",
        "steps": 8,
        "repeats": 20,
        "status": "ok",
        "reason": "",
        "min_ms": 1.0,
        "max_ms": 3.0,
        "compile_s": 1.0,
        "peak_bytes": 2**20,
        "cell_steps_per_s": 1e6,
        "note": "",
    }
    rows = table(
        [
            {**base, "impl": "nca_lab", "median_ms": 10.0},
            {**base, "impl": "cax", "median_ms": 250.0},
            {**base, "impl": "cax", "median_ms": math.nan, "status": "too_big", "reason": "plans 90 GiB"},
        ]
    )
    lines = rows.splitlines()
    assert lines[0].startswith("| suite | case | impl |") and len(lines) == 5
    assert "| 25.00x |" in lines[3]
    assert "too_big" in lines[4] and "plans 90 GiB" in lines[4]


def test_cli_writes_one_record_per_implementation(tmp_path):
    peers = [name for name in ("cax", "torch") if importlib.util.find_spec(name) is not None]
    out = tmp_path / "bench.json"
    args = ["--suite", "growing", "--steps", "1", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    # The timed steps run as XLA optimises them by default (conftest lowers it for the other tests).
    result = run_cli(*args, *(["--peer", *peers] if peers else []), module="nca_lab.bench", env={"XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| growing | 8x72x72 | nca_lab | 1 | 1 |" in result.stdout
    assert "make_train_step, XLA, active cells, manual VJP, pool 1024" in result.stdout  # how nca_lab ran
    records = json.loads(out.read_text())
    assert [r["impl"] for r in records] == ["nca_lab", *peers]
    for record in records:
        assert set(record) >= FIELDS and record["status"] == "ok", record
        assert record["min_ms"] <= record["median_ms"] <= record["max_ms"]
        assert record["cell_steps_per_s"] > 0 and record["peak_bytes"] > 0
        assert record["compile_s"] > 0 if record["impl"] != "torch" else record["compile_s"] == 0
        assert record["versions"]["jax"] and record["device"].startswith("cpu")


def test_a_missing_peer_package_is_one_line_saying_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.delitem(sys.modules, "nca_lab.bench.torch_impl", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--suite", "growing", "--steps", "1", "--peer", "torch"])
    assert exit_info.value.code == 2
    assert "the PyTorch peer needs PyTorch: pip install torch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag",
    [
        ["--unroll", "0"],
        ["--steps", "0"],
        ["--kernel", "cuda"],
        ["--repeats", "0"],
        ["--json", "/no/dir/b.json"],
        ["--memory-budget-gb", "0"],
        ["--memory-budget-gb", "nan"],
    ],
)
def test_bad_options_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--suite", "growing", *flag])
    assert exit_info.value.code == 2
    assert flag[0] in capsys.readouterr().err


def test_the_torch_peer_is_refused_off_a_cpu(monkeypatch, capsys):
    monkeypatch.setattr("jax.default_backend", lambda: "gpu")
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--suite", "growing", "--peer", "torch"])
    assert exit_info.value.code == 2
    assert "--peer torch is an eager PyTorch NCA on the CPU" in capsys.readouterr().err


def test_the_command_fails_when_nca_lab_cannot_run_a_case(monkeypatch, capsys):
    def broken(case, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr("nca_lab.bench.nca_lab_impl.build", broken)
    assert bench_main(["--suite", "growing", "--steps", "1", "--repeats", "1"]) == 1
    err = capsys.readouterr().err
    assert "nca_lab: could not build: RuntimeError: no such kernel" in err
    assert "error: nca_lab failed on growing 8x72x72" in err
