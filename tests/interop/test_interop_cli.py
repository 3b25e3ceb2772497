"""``python -m nca_lab.grow`` and ``python -m nca_lab.export`` as a user runs them, bad input included."""

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from nca_lab import export as export_cli
from nca_lab import grow as grow_cli
from nca_lab.errors import ConfigError
from nca_lab.interop import read_model
from nca_lab.nca import NCA
from nca_lab.perceive.learned import LearnedPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.tasks.growing import seed_state
from nca_lab.update.residual import ResidualUpdate

from nca_testing import TINY, interrupted, run_cli
from original_reference import TFJS_GRAPH, WEBGL8
from webgl8_checks import assert_within_quantisation, dense_params


def test_grow_defaults_grow_the_lizard(tmp_path, reference_lizard):
    out = tmp_path / "lizard"
    result = run_cli(str(WEBGL8), "--out", str(out), module="nca_lab.grow")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "200 steps on 72x72" in result.stdout
    final = np.load(out / "final_state.npy")
    assert final.dtype == np.float32 and final.shape == (72, 72, 16)
    assert np.mean((final[..., :4] - reference_lizard[200][..., :4]) ** 2) < 2e-3
    with Image.open(out / "final.png") as png:
        assert png.size == (288, 288)
    with Image.open(out / "rollout.gif") as gif:
        assert 50 < gif.n_frames <= 201  # the seed and every step (GIF merges identical frames)


def test_grow_options(tmp_path):
    out = tmp_path / "options"
    options = ["--steps", "7", "--size", "20", "30", "--seed", "3", "--fire-rate", "0.7", "--angle", "45", "--damage"]
    grow_cli.main([str(TFJS_GRAPH), *options, "--out", str(out)])
    final = np.load(out / "final_state.npy")
    assert final.shape == (20, 30, 16) and np.isfinite(final).all()
    with Image.open(out / "rollout.gif") as gif:
        assert gif.size == (300, 200)
    options[options.index("--seed") + 1] = "4"
    grow_cli.main([str(TFJS_GRAPH), *options, "--out", str(tmp_path / "seed4")])
    assert not np.array_equal(np.load(tmp_path / "seed4" / "final_state.npy"), final)  # --seed draws the updates


def test_fire_rate_and_angle_reach_the_model():
    model = grow_cli.configure(read_model(WEBGL8), str(WEBGL8), fire_rate=0.7, angle=45.0)
    assert model.update.fire_rate == 0.7 and model.perceive.angle == pytest.approx(math.pi / 4)  # degrees in
    unchanged = grow_cli.configure(read_model(WEBGL8), str(WEBGL8), fire_rate=None, angle=None)
    assert unchanged.update.fire_rate == 0.5 and unchanged.perceive.angle == 0.0


def test_angle_turns_any_perception_with_an_angle_and_names_one_without():
    perceive = LearnedPerceive(4, rngs=nnx.Rngs(0))
    model = NCA(perceive, ResidualUpdate(perceive.out_features, 4, hidden_sizes=[4], rngs=nnx.Rngs(0)))
    refusal = r"^m: --angle rotates a perception with an angle \(Sobel's\); this model has LearnedPerceive$"
    with pytest.raises(ConfigError, match=refusal):
        grow_cli.configure(model, "m", fire_rate=None, angle=30.0)
    perceive.angle = 0.0  # a perceive of one's own that turns (say, a learned one of a user's)
    assert grow_cli.configure(model, "m", fire_rate=None, angle=30.0).perceive.angle == pytest.approx(math.pi / 6)


def test_a_run_starts_from_its_tasks_sample_unless_its_task_grows_from_the_seed():
    assert grow_cli.default_start(str(WEBGL8)) == "seed"  # a released model has no task
    starts = {
        "nca_lab.tasks.diffusing.DiffusingTask": "task",
        "nca_lab.tasks.mnist_inpainting.MnistInpaintingTask": "task",
        "nca_lab.tasks.growing.GrowingTask": "seed",
        "nca_lab.tasks.regenerating.RegeneratingTask": "seed",  # a GrowingTask
        "no_such_module.Task": "seed",  # as every run grew before --start (--start task says why)
        "nca_lab.tasks.growing.seed_state": "seed",  # not a class
    }
    assert {target: grow_cli.start_of_task(target) for target in starts} == starts


def test_a_released_model_grows_into_a_dir_named_by_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8"])
    grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8", "--damage"])
    grown = sorted(p.name for p in (tmp_path / "outputs" / "grow").iterdir())
    assert grown == [f"{WEBGL8.stem}_8x8_steps2", f"{WEBGL8.stem}_8x8_steps2_damage"]


def test_variants_of_a_grow_get_dirs_of_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    variants = {
        (): WEBGL8.stem,
        ("--seed", "3"): f"{WEBGL8.stem}_seed3",
        ("--angle", "45", "--fire-rate", "0.25"): f"{WEBGL8.stem}_fire0.25_angle45",
        ("--size", "20", "30", "--steps", "7", "--damage"): f"{WEBGL8.stem}_20x30_steps7_damage",
        ("--start", "seed", "--damage"): f"{WEBGL8.stem}_from-seed_damage",
    }
    for options, name in variants.items():
        assert grow_cli.default_out(WEBGL8.stem, grow_cli.parse_args([str(WEBGL8), *options])) == Path(
            "outputs", "grow", name
        )
    grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8", "--seed", "1"])
    grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8", "--seed", "2"])
    grown = sorted(p.name for p in (tmp_path / "outputs" / "grow").iterdir())
    assert grown == [f"{WEBGL8.stem}_8x8_steps2_seed1", f"{WEBGL8.stem}_8x8_steps2_seed2"]


def test_damage_cuts_a_hole_that_regrows():
    model = read_model(WEBGL8)
    _, frames = grow_cli.grow_from(model, seed_state((72, 72), 16), 160, jax.random.key(0), damage=True)
    grown, cut, healed = frames[80], frames[81], frames[-1]  # 80 steps, the cut, 80 more
    alive = [int((f[..., 3] > 0.1).sum()) for f in (grown, cut, healed)]
    assert alive[1] < 0.85 * alive[0] and alive[2] > 0.95 * alive[0], alive


def test_the_hole_is_cut_where_cells_live_at_the_models_threshold():
    """``grow --damage`` bites into what lives by the model's alive threshold (the paper's 0.1
    for a model without one), and leaves a model's fixed input channels."""
    state = np.zeros((20, 20, 8), np.float32)
    state[2:6, 2:6] = 0.5  # lives at 0.1 and at 0.3
    state[10:18, 10:18] = 0.2  # lives at 0.1 only
    high = read_model(WEBGL8)
    high.alive_threshold = 0.3
    low = read_model(WEBGL8)
    low.alive_threshold = None
    assert (grow_cli.living_threshold(high), grow_cli.living_threshold(low)) == (0.3, 0.1)
    small = grow_cli.cut_hole(state, grow_cli.living_threshold(high))  # box 2-5: a disc of radius 1 at 3.5
    assert np.all(small[3:5, 3:5] == 0.0) and np.all(small[10:18, 10:18] == 0.2) and small[2, 2, 0] == 0.5
    large = grow_cli.cut_hole(state, grow_cli.living_threshold(low))  # box 2-17: radius 3.75 at 9.5
    assert np.all(large[12, 10:13] == 0.0) and np.all(large[2:6, 2:6] == 0.5)
    kept = grow_cli.cut_hole(state, 0.1, fixed_channels=2)
    np.testing.assert_array_equal(kept[..., :6], large[..., :6])
    np.testing.assert_array_equal(kept[..., 6:], state[..., 6:])


def test_same_seed_same_result(tmp_path):
    finals = []
    for name in ("a", "b"):
        grow_cli.main([str(WEBGL8), "--steps", "6", "--size", "16", "--out", str(tmp_path / name)])
        finals.append(np.load(tmp_path / name / "final_state.npy"))
    np.testing.assert_array_equal(*finals)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--angle", "nan"], "--angle must be a finite number"),
        (["--angle", "inf"], "--angle must be a finite number"),
        (["--steps", "99999999999999999999"], "--steps must be from 1 to 1000000"),
        (["--steps", "3000000000"], "--steps must be from 1 to 1000000"),
        (["--size", "100000"], "--size must be from 1 to 4096"),
        (["--seed", "99999999999999999999"], "--seed must be from 0 to 4294967295"),
        (["--damage", "--steps", "1"], "--damage needs --steps of at least 2"),
    ],
    ids=["angle nan", "angle inf", "steps beyond int64", "steps 3e9", "size 1e5", "seed beyond int64", "damage 1 step"],
)
def test_values_that_cannot_run_are_usage_errors(options, message, tmp_path, capsys):
    argv = [str(WEBGL8), "--steps", "3", "--size", "8", *options, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err  # argparse's usage block left out
    assert err.endswith("(see python -m nca_lab.grow --help)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "error",
    [MemoryError(), jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4096 bytes.")],
    ids=["numpy", "xla"],
)
def test_running_out_of_memory_is_one_line(error, tmp_path, capsys, monkeypatch):
    def grow_from(*args):
        raise error

    monkeypatch.setattr(grow_cli, "grow_from", grow_from)
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main([str(WEBGL8), "--size", "4096", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: growing 4096x4096 for 200 steps does not fit in memory (try a smaller --size or fewer --steps)\n"
    )


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """A write that fails (here a directory where ``final.png`` goes: a read-only dir or a full
    disk fail the same way, also as root) is one line and exit 2, the files written before it
    left whole."""
    out = tmp_path / "out"
    (out / "final.png").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main([str(WEBGL8), "--steps", "3", "--size", "8", "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {out}: cannot write (Is a directory)\n"
    assert sorted(p.name for p in out.iterdir()) == ["final.png", "rollout.gif"]  # no temporary file left


def test_an_output_under_a_file_names_the_file(tmp_path, capsys):
    """It said "cannot write (File exists)", of a file nowhere named."""
    blocker = tmp_path / "model.json"
    blocker.write_text("mine")
    for run, argv in (
        (export_cli.main, [str(WEBGL8), "--out", str(blocker / "x.json")]),
        (grow_cli.main, [str(WEBGL8), "--steps", "2", "--size", "8", "--out", str(blocker)]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.endswith(f"({blocker}: a file, not a directory)\n")
    assert blocker.read_text() == "mine"


def test_an_output_that_is_a_runs_own_dir_is_refused(tmp_path, capsys):
    """``--out <run dir>`` overwrote the run's ``rollout.gif`` and ``final.png`` (and inside its
    checkpoints or renderings it would write among Orbax's files or over a kept rendering); a
    dir inside the run is fine."""
    run = tmp_path / "run"
    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "renders" / "2").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n')
    (run / "final.png").write_bytes(b"the run's own")
    for out in (run, run / "checkpoints" / "2", run / "checkpoints" / "grown", run / "renders" / "2"):
        with pytest.raises(SystemExit) as exit_info:
            grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8", "--out", str(out)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (
            f"error: {out}: that is where the run {run} keeps its own files; give --out another dir\n"
        )
    assert (run / "final.png").read_bytes() == b"the run's own" and not (run / "checkpoints" / "grown").exists()
    grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8", "--out", str(run / "grown")])
    assert (run / "grown" / "final.png").is_file()
    mine = tmp_path / "mine"  # a dir of one's own that happens to have a checkpoints/ is no run
    (mine / "checkpoints").mkdir(parents=True)
    grow_cli.main([str(WEBGL8), "--steps", "2", "--size", "8", "--out", str(mine / "checkpoints" / "grown")])
    assert (mine / "checkpoints" / "grown" / "final.png").is_file()


def test_export_writes_a_file_that_loads_back(tmp_path, capsys):
    out = tmp_path / "sub" / "no_tail.webgl8.json"
    export_cli.main([str(TFJS_GRAPH), "--format", "webgl8", "--out", str(out)])
    assert capsys.readouterr().out == f"wrote {out} (webgl8)\n"
    assert_within_quantisation(dense_params(read_model(TFJS_GRAPH)), read_model(out), json.loads(out.read_text()))


def test_export_notes_what_the_demo_runs_differently(tmp_path, capsys, monkeypatch):
    trained = read_model(TFJS_GRAPH)
    trained.update.fire_rate = 0.75
    trained.perceive = SobelPerceive(trained.num_channels, angle=math.pi / 4)
    monkeypatch.setattr(export_cli, "read_model", lambda source: trained)
    out = tmp_path / "rotated.webgl8.json"
    export_cli.main(["trained-run", "--out", str(out)])
    assert capsys.readouterr().out.splitlines() == [
        "note: the web demo updates cells at fire rate 0.5; this model was trained with 0.75",
        "note: this model perceives at angle 0.785398 rad (45 degrees); "
        "the web demo starts at 0: set its rotation to match",
        f"wrote {out} (webgl8)",
    ]
    trained.update.fire_rate = 0.25  # below the demo's, as above it
    assert export_cli.demo_differences(trained)[0].endswith("this model was trained with 0.25")


def _edit_json(source, edit):
    document = json.loads(source.read_text())
    edit(document)
    return json.dumps(document)


def _webgl8_layer(index, **changes):
    return lambda doc: doc[index].update({k: v(doc[index][k]) if callable(v) else v for k, v in changes.items()})


def _graph_nodes(edit):
    return lambda doc: edit(doc["modelTopology"]["node"])


def _set_shape(name_end, dims):
    def edit(nodes):
        node = next(n for n in nodes if n["name"].endswith(name_end))
        node["attr"]["value"]["tensor"]["tensorShape"]["dim"] = [{"size": str(d)} for d in dims]

    return edit


def _truncate_content(name_end):
    def edit(nodes):
        tensor = next(n for n in nodes if n["name"].endswith(name_end))["attr"]["value"]["tensor"]
        tensor["tensorContent"] = tensor["tensorContent"][:1000]

    return edit


def _rename_op(old, new):
    def edit(nodes):
        for node in nodes:
            if node["op"] == old:
                node["op"] = new

    return edit


def _set_constants(name_ends, **tensor):
    def edit(nodes):
        for node in nodes:
            if node["name"].endswith(name_ends):
                node["attr"]["value"]["tensor"].update(tensor)

    return edit


#: The identity 3x3 filter's constant in the released graph (``tensorContent``, float32).
_IDENTITY_CONTENT = "AAAAAAAAAAAAAAAAAAAAAAAAgD8AAAAAAAAAAAAAAAAAAAAA"

#: name -> (file contents, expected message after "error: <file>: ")
BAD_INPUTS = {
    "neither format": (json.dumps({"hello": "world"}), "neither a webgl8 model"),
    "json list of numbers": ("[1, 2]", "neither a webgl8 model"),
    "not json": (b"\x89PNG\r\n\x1a\n\x00\x00", "not a JSON file"),
    "truncated json": (WEBGL8.read_text()[:5000], "not valid JSON"),
    # JSON past Python's limits: a RecursionError, a ValueError, each a traceback
    "json nested too deep": ("[" * 100_000 + "]" * 100_000, "JSON that cannot be read (maximum recursion depth"),
    "json integer too long": ("[" + "1" * 5000 + "]", "JSON that cannot be read (Exceeds the limit (4300 digits)"),
    "truncated base64": (
        _edit_json(WEBGL8, _webgl8_layer(1, data_b64=lambda s: s[:1000])),
        "layer 2: data_b64 holds 750 bytes, expected (in_ch + 1) * out_ch = 2064 (truncated?)",
    ),
    "broken base64": (
        _edit_json(WEBGL8, _webgl8_layer(0, data_b64=lambda s: s[:1001])),
        "layer 1: data_b64 is not valid base64",
    ),
    "webgl8 wrong layer size": (
        _edit_json(WEBGL8, _webgl8_layer(0, in_ch=32)),
        "layer 1 is 32 -> 128, expected 48 -> 128",
    ),
    "webgl8 one layer": (_edit_json(WEBGL8, lambda doc: doc.pop()), "a list of 2 layers, this one has 1"),
    "webgl8 float16": (
        _edit_json(WEBGL8, _webgl8_layer(1, type="float16")),
        "layer 2: type 'float16' is not supported",
    ),
    "webgl8 scale past float32": (  # it grew nothing, with a note that blamed the task
        _edit_json(WEBGL8, _webgl8_layer(0, weight_scale=1e39)),
        "layer 1: weight_scale must be a finite float32 >= 0, got 1e+39",
    ),
    "webgl8 scale true": (_edit_json(WEBGL8, _webgl8_layer(1, bias_scale=True)), "bias_scale must be a finite"),
    "graph size not a number": (  # the readers' checks did not foresee it: a traceback
        _edit_json(TFJS_GRAPH, _graph_nodes(_set_shape("conv2d_15/Conv2D/ReadVariableOp/resource", [1, 1, "one", 16]))),
        "a malformed TF.js graph model (invalid literal for int() with base 10: 'one')",
    ),
    "graph wrong layer size": (
        _edit_json(TFJS_GRAPH, _graph_nodes(_set_shape("conv2d_15/Conv2D/ReadVariableOp/resource", [1, 1, 128, 8]))),
        "the layer 2 kernel has shape [1, 1, 128, 8], expected [1, 1, 128, 16]",
    ),
    "graph truncated tensor": (
        _edit_json(TFJS_GRAPH, _graph_nodes(_truncate_content("conv2d_14/Conv2D/ReadVariableOp/resource"))),
        "the layer 1 kernel's tensorContent holds 750 bytes, expected 24576 (truncated?)",
    ),
    "graph without perception": (
        _edit_json(TFJS_GRAPH, _graph_nodes(_rename_op("DepthwiseConv2dNative", "Conv2D"))),
        "the graph has no DepthwiseConv2dNative node",
    ),
    "graph without relu": (
        _edit_json(TFJS_GRAPH, _graph_nodes(_rename_op("Relu", "Tanh"))),
        "the graph has no Relu reading layer 1's BiasAdd",
    ),
    "graph with another perception": (  # its Sobel-y filters (and their rotation) made identities
        _edit_json(TFJS_GRAPH, _graph_nodes(_set_constants(("mul_1/y", "mul_3/y"), tensorContent=_IDENTITY_CONTENT))),
        "the perception is not the identity + Sobel filters of a Growing NCA",
    ),
    "graph alive threshold of many values": (  # one value splatted to its shape: 36 TiB, a MemoryError
        _edit_json(TFJS_GRAPH, _graph_nodes(_set_shape("Greater/y", [100_000, 100_000, 1000]))),
        "the alive threshold has shape [100000, 100000, 1000], not one value",
    ),
    "graph without alive mask": (
        _edit_json(TFJS_GRAPH, _graph_nodes(_rename_op("MaxPool", "AvgPool"))),
        "the graph has no alive mask",
    ),
}


@pytest.mark.parametrize("command", ["grow", "export"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case, command, tmp_path, capsys):
    contents, message = BAD_INPUTS[case]
    model = tmp_path / "model.json"
    model.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    out = tmp_path / "out"
    if command == "grow":
        run, argv = grow_cli.main, [str(model), "--steps", "2", "--size", "8", "--out", str(out)]
    else:
        run, argv = export_cli.main, [str(model), "--format", "webgl8", "--out", str(out / "m.json")]
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {model}: "), err
    assert message in err, err
    assert not out.exists()


def test_missing_model_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.json'}: no such file or directory\n"
    assert not (tmp_path / "out").exists()


def test_bad_input_from_a_real_process(tmp_path):
    model = tmp_path / "m.json"
    model.write_text(BAD_INPUTS["graph wrong layer size"][0])
    out = tmp_path / "out" / "m.json"
    result = run_cli(str(model), "--format", "webgl8", "--out", str(out), module="nca_lab.export")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {model}: the layer 2 kernel has shape [1, 1, 128, 8], expected [1, 1, 128, 16]"
    ]
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("module", "delay"), [("nca_lab.grow", 0.5), ("nca_lab.grow", 4.0), ("nca_lab.export", 0.5), ("nca_lab.bench", 0.5)]
)
def test_ctrl_c_is_one_line_and_143(module, delay, tmp_path):
    """SIGINT while JAX loads (0.5 s) or while a grow runs (4 s): it was a page of traceback."""
    args = {
        "nca_lab.grow": [str(WEBGL8), "--size", "256", "--steps", "2000", "--out", str(tmp_path / "grown")],
        "nca_lab.export": [str(WEBGL8), "--out", str(tmp_path / "model.json")],
        "nca_lab.bench": ["--suite", "growing", "--steps", "1"],
    }[module]
    assert interrupted(*args, module=module, after=delay) == (143, "stopped: by a signal\n")
    assert not (tmp_path / "grown").exists()


def test_export_from_python_takes_paths_as_strings(tmp_path):
    """``export(source, "<file>")`` failed: 'str' object has no attribute 'parent'."""
    out = tmp_path / "sub" / "lizard.json"
    assert export_cli.export(str(WEBGL8), str(out)) == []
    assert json.loads(out.read_text()) == json.loads(WEBGL8.read_text())  # the released file, byte-equal in JSON
    with pytest.raises(ConfigError, match=r"^format must be one of webgl8, got 'onnx'$"):  # was KeyError: 'onnx'
        export_cli.export(str(WEBGL8), str(tmp_path / "other.json"), fmt="onnx")
    assert not (tmp_path / "other.json").exists()


def test_a_damaged_checkpoint_is_one_line_from_grow_and_export(tmp_path):
    """A checkpoint's array cut short: Orbax's traceback, then its abandoned reads' and
    TensorStore's closed-loop tracebacks, at every grow or export of the run."""
    from nca_lab.config import compose
    from nca_lab.train.run import run

    run(compose(*TINY, "trainer.checkpoint_every=1"), tmp_path / "run")
    kernel = tmp_path / "run" / "checkpoints" / "2" / "model" / "update.out.kernel"
    for chunk in kernel.glob("0*"):
        chunk.write_bytes(b"")
    for module, out in (("nca_lab.grow", "grown"), ("nca_lab.export", "model.json")):
        result = run_cli(str(tmp_path / "run"), "--out", str(tmp_path / out), module=module)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
        assert result.stderr.startswith(f"error: {kernel.parent.parent}: a damaged checkpoint? It cannot be read (")
        assert result.stderr.endswith("to use the newest other one (step 1)\n")
        assert not (tmp_path / out).exists()


def test_a_malformed_export_option_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main([str(WEBGL8), "--format", "tfjs", "--out", str(tmp_path / "m.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # argparse's words, which Python versions vary, in one line
    assert err.startswith("error: argument --format: invalid choice: 'tfjs'") and err.count("\n") == 1
    assert err.endswith("(see python -m nca_lab.export --help)\n")
    assert not (tmp_path / "m.json").exists()


def test_an_installed_command_is_named_as_typed(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/nca-lab-grow", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: nca-lab-grow ")


def test_a_graph_models_alive_threshold_is_its_own(tmp_path):
    model = tmp_path / "model.json"
    model.write_text(_edit_json(TFJS_GRAPH, _graph_nodes(_set_constants(("Greater/y", "Greater_1/y"), floatVal=[0.2]))))
    assert read_model(model).alive_threshold == pytest.approx(0.2)
