"""The benchmark harness: suite selection, the table, and one real (tiny) run of the CLI.

Nothing here is timed: the harness's numbers are for ``python -m nca_lab.bench``.
"""

import importlib.util
import json
import math
import signal
import subprocess
import sys
import types

import pytest

from nca_lab.bench.__main__ import main as bench_main
from nca_lab.bench.report import LEGEND, table
from nca_lab.bench.suites import CPU_STEPS, SUITES, cases

from nca_testing import REPO, run_cli

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
        "lower_s": 0.5,
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
    assert cells(lines[0])[:3] == ["suite", "case", "impl"] and len(lines) == 5
    assert len({line.index("| cax") for line in lines[3:]} | {lines[0].index("| impl")}) == 1  # columns line up
    assert "25.00x" in cells(lines[3])
    assert cells(lines[0])[8:10] == ["lower s", "compile s"] and cells(lines[2])[8:10] == ["0.50", "1.00"]
    assert "too_big" in cells(lines[4]) and "1 (plan)" in cells(lines[4]) and cells(lines[4])[-1] == "plans 90 GiB"
    earlier = {k: v for k, v in base.items() if k != "lower_s"} | {"compile_s": None}  # a record read back from JSON
    read_back = table([{**earlier, "impl": "nca_lab", "median_ms": 10.0}]).splitlines()  # older, or NaN as null
    assert cells(read_back[2])[8:10] == ["-", "-"]


def test_with_several_kernels_rows_name_them_and_the_peer_is_divided_by_the_fastest():
    base = {
        "suite": "growing", "case": "8x72x72", "steps": 8, "repeats": 20, "status": "ok", "reason": "",
        "min_ms": 1.0, "max_ms": 300.0, "lower_s": 0.5, "compile_s": 1.0, "peak_bytes": 2**20,
        "cell_steps_per_s": 1e6, "note": "",
    }  # fmt: skip
    lines = table(
        [
            {**base, "impl": "nca_lab", "kernel": "xla", "median_ms": 20.0},
            {**base, "impl": "nca_lab", "kernel": "pallas", "median_ms": 10.0},
            {**base, "impl": "cax", "kernel": None, "median_ms": 250.0},
        ]
    ).splitlines()
    assert [cells(line)[2] for line in lines[2:]] == ["nca_lab (xla)", "nca_lab (pallas)", "cax"]
    assert [cells(line)[12] for line in lines[2:]] == ["", "", "25.00x"]


def test_cli_runs_each_kernel_against_the_same_peer_run_and_pallas_only_where_it_applies(monkeypatch, capsys, tmp_path):
    """Both kernels of the growing suite run for real (Pallas interpreted); the attention
    cases, which the fused kernels do not compute, get one (trivial) XLA row each."""
    real = bench_main.__globals__["nca_lab_impl"].build
    monkeypatch.setattr(
        "nca_lab.bench.nca_lab_impl.build",
        lambda case, **kw: real(case, **kw) if case.suite == "growing" else make_trivial_workload(),
    )
    out = tmp_path / "b.json"
    args = ["--suite", "growing", "attention", "--kernel", "xla", "pallas", "--steps", "1", "--repeats", "1"]
    assert bench_main([*args, "--warmup", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["suite"], r["impl"], r["kernel"]) for r in records] == [
        ("growing", "nca_lab", "xla"),
        ("growing", "nca_lab", "pallas"),
        ("attention", "nca_lab", "xla"),
        ("attention", "nca_lab", "xla"),
    ]
    assert "Pallas fused rollout, rollout VJP" in records[1]["note"] and "XLA" in records[0]["note"]
    assert "nca_lab (pallas): not run (the fused kernels compute the sobel perceive only)" in capsys.readouterr().out


def test_a_record_names_the_kernel_that_ran(monkeypatch, tmp_path):
    """``--kernel pallas`` alone on the attention suite runs XLA's step: its records said pallas."""
    monkeypatch.setattr("nca_lab.bench.nca_lab_impl.build", lambda case, **kw: make_trivial_workload())
    out = tmp_path / "b.json"
    args = ["--suite", "attention", "--kernel", "pallas", "--steps", "1", "--repeats", "1", "--warmup", "1"]
    assert bench_main([*args, "--json", str(out)]) == 0
    assert {(r["impl"], r["kernel"]) for r in json.loads(out.read_text())} == {("nca_lab", "xla")}


def test_the_throughput_keeps_three_significant_figures():
    row = {
        "suite": "attention", "case": "4x72x72", "impl": "nca_lab", "steps": 8, "repeats": 20, "status": "ok",
        "reason": "", "median_ms": 1e3, "min_ms": 1e3, "max_ms": 1e3, "lower_s": 0.5, "compile_s": 1.0,
        "peak_bytes": None, "cell_steps_per_s": 1234.0, "note": "",
    }  # fmt: skip
    assert "0.00123" in cells(table([row]).splitlines()[2])


def cells(line: str) -> list[str]:
    """The stripped cells of a markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_cli_writes_one_record_per_implementation(tmp_path):
    peers = [name for name in ("cax", "torch") if importlib.util.find_spec(name) is not None]
    out = tmp_path / "bench.json"
    args = ["--suite", "growing", "--steps", "1", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    # The timed steps run as XLA optimises them by default (conftest lowers it for the other tests).
    result = run_cli(*args, *(["--peer", *peers] if peers else []), module="nca_lab.bench", env={"XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [cells(line) for line in result.stdout.splitlines() if line.startswith("| growing")]
    assert [row[:5] for row in rows] == [["growing", "8x72x72", impl, "1", "1"] for impl in ["nca_lab", *peers]]
    assert "make_train_step, XLA, active cells, manual VJP, pool 1024" in result.stdout  # how nca_lab ran
    records = json.loads(out.read_text())
    assert [r["impl"] for r in records] == ["nca_lab", *peers]
    for record in records:
        assert set(record) >= FIELDS and record["status"] == "ok", record
        assert record["min_ms"] <= record["median_ms"] <= record["max_ms"]
        assert record["cell_steps_per_s"] > 0 and record["peak_bytes"] > 0
        assert record["compile_s"] > 0 if record["impl"] != "torch" else record["compile_s"] == 0
        assert record["lower_s"] > 0 if record["impl"] != "torch" else record["lower_s"] == 0
        assert record["compile_s_each"] == ([record["compile_s"]] if record["impl"] != "torch" else [])
        assert record["compile_repeats"] == 1 and record["xla_flags"] == ""  # as the run's environment said
        assert (record["repeats_asked"], record["max_seconds"]) == (1, None)  # the settings too (no time limit)
        assert record["memory_budget_bytes"] > 0
        assert record["versions"]["jax"] and record["device"].startswith("cpu")
        kernel = "xla" if record["impl"] == "nca_lab" else None  # a peer has no kernel choice
        assert (record["steps"], record["suite_steps"], record["kernel"], record["warmup"]) == (1, 96, kernel, 1)
        assert len(record["git_sha"]) == 40 and isinstance(record["git_dirty"], bool)  # the tests run in a checkout


def test_on_a_cpu_rollouts_are_shortened_unless_steps_says_otherwise(tmp_path, capsys):
    """README: on a CPU the rollouts are 8 CA steps long unless --steps N; the output says so,
    the records keep both lengths, and the legend follows the table."""
    out = tmp_path / "b.json"
    assert bench_main(["--suite", "growing", "--repeats", "1", "--warmup", "1", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"CPU: rollouts shortened to {CPU_STEPS} CA steps (the suites' own: growing 96" in stdout
    assert LEGEND.strip() in stdout and stdout.index("| growing") < stdout.index(LEGEND.strip()[:40])
    (record,) = json.loads(out.read_text())
    assert (record["steps"], record["suite_steps"], record["repeats"]) == (CPU_STEPS, 96, 1)


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
        ["--compile-repeats", "0"],
        ["--json", "/no/dir/b.json"],
        ["--memory-budget-gb", "0"],
        ["--memory-budget-gb", "nan"],
        ["--warmup", "0"],
        ["--max-seconds", "0"],
        ["--max-seconds", "-5"],
        ["--json", "/proc/b.json"],
        ["--json", "/tmp"],
    ],
)
def test_bad_options_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--suite", "growing", *flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and flag[0] in err  # no usage block


def test_the_torch_peer_is_refused_off_a_cpu(monkeypatch, capsys):
    monkeypatch.setattr("jax.default_backend", lambda: "gpu")
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--suite", "growing", "--peer", "torch"])
    assert exit_info.value.code == 2
    assert "--peer torch is an eager PyTorch NCA on the CPU" in capsys.readouterr().err


def test_the_command_fails_when_nca_lab_cannot_run_a_case(monkeypatch, capsys):
    def broken(case, **kwargs):
        raise RuntimeError("no such kernel\n  where XLA says more, on lines of their own")

    monkeypatch.setattr("nca_lab.bench.nca_lab_impl.build", broken)
    assert bench_main(["--suite", "growing", "--steps", "1", "--repeats", "1"]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "nca_lab: could not build: RuntimeError: no such kernel\n" in err  # its first line only
    assert "on lines of their own" not in captured.out + err  # the table's rows stay one line each
    assert "error: nca_lab failed on growing 8x72x72" in err


def test_a_peer_that_cannot_run_a_case_has_a_record_saying_why(monkeypatch, capsys, tmp_path):
    def unsupported(case, **kwargs):
        raise ValueError("the peer implements the Sobel NCA only")

    peer = types.ModuleType("fake_peer")
    peer.build = unsupported
    monkeypatch.setitem(sys.modules, "fake_peer", peer)
    monkeypatch.setitem(bench_main.__globals__["PEERS"], "cax", "fake_peer")
    monkeypatch.setattr("nca_lab.bench.nca_lab_impl.build", lambda case, **kw: make_trivial_workload())
    out = tmp_path / "b.json"
    assert bench_main(["--suite", "growing", "growing", "--peer", "cax", "--repeats", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["impl"], r["status"]) for r in records] == [("nca_lab", "ok"), ("cax", "not_built")]  # growing once
    assert records[1]["reason"] == "ValueError: the peer implements the Sobel NCA only"
    assert "not_built" in capsys.readouterr().out


def make_trivial_workload():
    from nca_lab.bench.measure import Workload

    return Workload(call=lambda i: i, trace=None, note="trivial")


def test_nothing_measured_is_an_error(monkeypatch, capsys):
    """A memory budget that no case fits: every row says so, and the command fails; the
    caller's signal handlers are back afterwards."""
    handler = signal.getsignal(signal.SIGINT)
    assert bench_main(["--suite", "growing", "--steps", "1", "--repeats", "1", "--memory-budget-gb", "1e-6"]) == 1
    captured = capsys.readouterr()
    assert "too_big" in captured.out and "error: no nca_lab case was measured" in captured.err
    assert signal.getsignal(signal.SIGINT) is handler


def test_ctrl_c_prints_and_writes_what_was_measured(tmp_path):
    """SIGINT in the second case (compiling it): the first case's rows are printed and written,
    one line says it stopped, exit 143 (it was a traceback, during compilation a segfault)."""
    out = tmp_path / "b.json"
    args = ["--suite", "rollout", "--steps", "1", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "nca_lab.bench", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("rollout 256x72x72"):
            process.send_signal(signal.SIGINT)
            break
    try:
        rest, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, err.splitlines()[-1]) == (143, "stopped: by a signal"), "".join(seen) + rest + err
    assert "Traceback" not in err
    assert [cells(line)[:3] for line in rest.splitlines() if line.startswith("| rollout")] == [
        ["rollout", "8x72x72", "nca_lab"]
    ]
    assert [(r["case"], r["status"]) for r in json.loads(out.read_text())] == [("8x72x72", "ok")]


def test_the_records_name_jaxs_gpu_plugin_where_one_is_installed(monkeypatch):
    """The XLA:GPU that ran is the plugin's (the H200 records had jax 0.11.2 and no word of
    the CUDA 13 plugin); on a machine without one, no empty entries."""
    from nca_lab.bench import report

    installed = {"jax": "0.11.2", "jax-cuda13-plugin": "0.11.2"}
    monkeypatch.setattr(report, "package_version", installed.get)
    recorded = report.versions()
    assert recorded["jax-cuda13-plugin"] == "0.11.2" and "jax-cuda12-plugin" not in recorded
    assert recorded["torch"] is None  # PACKAGES are all recorded, None where absent
