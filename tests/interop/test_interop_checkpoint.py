"""A model trained by nca_lab exports to webgl8 and grows from its run dir, checkpoints dir or step dir."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from nca_lab import export as export_cli
from nca_lab import grow as grow_cli
from nca_lab.ckpt import RunCheckpointer
from nca_lab.interop import read_model
from nca_lab.interop.webgl8 import to_webgl8
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.tasks.growing import seed_state
from nca_lab.train.run import load_model
from nca_lab.update.residual import ResidualUpdate

from nca_testing import TINY, run_cli
from webgl8_checks import assert_within_quantisation, dense_params


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("interop") / "run"
    result = run_cli(*TINY, "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}")  # steps 1 and 2
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_trained_run_exports_and_loads_back(tiny_run, tmp_path, capsys):
    out = tmp_path / "trained.webgl8.json"
    export_cli.main([str(tiny_run), "--format", "webgl8", "--out", str(out)])
    assert capsys.readouterr().out == f"wrote {out} (webgl8)\n"
    trained, back = load_model(tiny_run), read_model(out)
    assert_within_quantisation(dense_params(trained), back, json.loads(out.read_text()))


def test_trained_run_grows_from_any_of_its_paths(tiny_run, tmp_path):
    step_dir = tiny_run / "checkpoints" / "2"
    expected, _ = grow_cli.grow_from(load_model(tiny_run), seed_state((12, 12), 16), 4, jax.random.key(0), damage=False)
    for index, source in enumerate((tiny_run, tiny_run / "checkpoints", step_dir)):
        out = tmp_path / str(index)
        grow_cli.main([str(source), "--steps", "4", "--size", "12", "--out", str(out)])
        np.testing.assert_array_equal(np.load(out / "final_state.npy"), expected)


def test_a_growing_run_grows_on_its_training_grid_for_its_horizon_by_default(tiny_run, tmp_path, capsys):
    """Without a sample pool (experiment 1) a pattern is trained to grow, not to persist: no 2x."""
    grow_cli.main([str(tiny_run), "--out", str(tmp_path)])  # TINY: a 12x12 grid, rollouts of 2-3 steps
    assert f"grew {tiny_run} for 3 steps on 12x12" in capsys.readouterr().out
    assert np.load(tmp_path / "final_state.npy").shape == (12, 12, 16)


def test_the_default_out_dir_names_the_run_and_step_so_grows_of_others_do_not_collide(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_name = f"{tiny_run.parent.name}_{tiny_run.name}"
    sources = {
        tiny_run: f"{run_name}_step2_8x8_steps2",  # the newest checkpoint
        tiny_run / "checkpoints": f"{run_name}_step2_8x8_steps2",
        tiny_run / "checkpoints" / "1": f"{run_name}_step1_8x8_steps2",
    }
    for source, name in sources.items():
        grow_cli.main([str(source), "--steps", "2", "--size", "8"])
        assert (tmp_path / "outputs" / "grow" / name / "final.png").is_file()
    grow_cli.main([str(tiny_run), "--steps", "2", "--size", "8", "--damage"])
    assert sorted(p.name for p in (tmp_path / "outputs" / "grow").iterdir()) == [
        f"{run_name}_step1_8x8_steps2",
        f"{run_name}_step2_8x8_steps2",
        f"{run_name}_step2_8x8_steps2_damage",
    ]


def test_a_grow_reads_one_checkpoint_while_its_run_saves_newer_ones(tiny_run, tmp_path, monkeypatch):
    """Each read found the newest checkpoint anew: a save between them grew step 2's weights
    into a dir named step 3 (and could take the grid or task from another checkpoint)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    read = grow_cli.read_model

    def read_while_the_run_saves(path):
        model = read(path)
        shutil.copytree(run_dir / "checkpoints" / "2", run_dir / "checkpoints" / "3")  # its next checkpoint
        return model

    monkeypatch.setattr(grow_cli, "read_model", read_while_the_run_saves)
    monkeypatch.chdir(tmp_path)
    grow_cli.main([str(run_dir), "--steps", "2", "--size", "8"])
    assert [p.name for p in (tmp_path / "outputs" / "grow").iterdir()] == [f"{tmp_path.name}_run_step2_8x8_steps2"]


def test_a_model_that_grows_nothing_from_the_seed_says_so(tmp_path, capsys):
    untrained = tmp_path / "untrained.webgl8.json"  # zero-initialised last layer: the seed never changes
    untrained.write_text(json.dumps(to_webgl8(NCA(SobelPerceive(16), ResidualUpdate(48, 16, rngs=nnx.Rngs(0))), "")))
    grow_cli.main([str(untrained), "--steps", "3", "--size", "9", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "3 steps on 9x9 (seed 0): 1 living cells" in captured.out
    assert captured.err.startswith("note: nothing grew from the seed")


def params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_a_step_dir_loads_that_step_not_the_newest(tiny_run):
    older = load_model(tiny_run / "checkpoints" / "1")
    newest = load_model(tiny_run)
    assert RunCheckpointer.find(tiny_run / "checkpoints" / "1").metadata()["step"] == 1
    assert any(not np.array_equal(a, b) for a, b in zip(params(older), params(newest), strict=True))
    explicit = load_model(tiny_run, step=1)
    jax.tree.map(np.testing.assert_array_equal, params(older), params(explicit))


@pytest.mark.parametrize("saved", ["trained_with_pallas", "saved_before_kernel_option"])
def test_loading_for_inference_runs_the_portable_step_on_a_cpu(tiny_run, monkeypatch, saved):
    metadata = RunCheckpointer.metadata

    def edited(self, step=None):
        meta = metadata(self, step)
        if saved == "trained_with_pallas":
            meta["config"]["kernel"] = "pallas"
        else:
            del meta["config"]["kernel"], meta["config"]["compact_cells"]
        return meta

    monkeypatch.setattr(RunCheckpointer, "metadata", edited)
    model = load_model(tiny_run)
    assert model.kernel == "xla" and model.compact_cells == "auto"
    jax.tree.map(np.testing.assert_array_equal, params(model), params(load_model(tiny_run / "checkpoints" / "2")))


def test_directory_without_checkpoint_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main([str(empty), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(empty) in err
    assert not (tmp_path / "out").exists()


def test_a_run_trained_without_its_config_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    """``Trainer.fit`` called from Python without ``config=`` saves none: grow said so in a traceback."""
    metadata = RunCheckpointer.metadata
    monkeypatch.setattr(RunCheckpointer, "metadata", lambda self, step=None: {**metadata(self, step), "config": {}})
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main([str(tiny_run), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hold no config to rebuild the model from" in err and "restore_model" in err
