"""``python -m nca_lab`` as a user runs it: outputs of a run, and one clear line for bad input."""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from omegaconf import OmegaConf
from PIL import Image

from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.perceive.base import Perceive
from nca_lab.train.run import build, run
from nca_lab.update.residual import ResidualUpdate

from nca_testing import REPO, TINY, interrupted, run_cli


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli(*TINY, *SMOKE, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir, result


#: The smoke run's settings besides TINY; an interpolation's override is recorded as typed.
SMOKE = ["trainer.checkpoint_every=1", "trainer.log_every=${trainer.steps}"]


def test_smoke_run_writes_the_run_outputs(smoke_run):
    run_dir, result = smoke_run
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["loss"] > 0 and "lr" in r for r in train)
    assert any("eval/mse" in r for r in lines)
    with Image.open(run_dir / "rollout.gif") as gif:
        assert 1 < gif.n_frames <= 2 * 3 + 1  # twice the horizon (GIF merges identical frames)
    with Image.open(run_dir / "final.png") as png:
        assert png.size[0] > png.size[1]  # target + grown samples side by side
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 2 and "eval/mse" in summary
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert "done: loss=" in result.stdout
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
    assert overrides == [f"- {o}" for o in (*TINY, *SMOKE)]  # hydra.run.dir is Hydra's, not the task's
    assert "seed: 0" in (run_dir / ".hydra" / "config.yaml").read_text().splitlines()


def test_rerunning_a_completed_run_skips_it_and_leaves_its_records(smoke_run):
    run_dir, _ = smoke_run
    records = {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()}
    before = (run_dir / "metrics.jsonl").read_text()
    result = run_cli(*TINY, "trainer.checkpoint_every=1", "trainer.log_every=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0
    assert "already completed" in result.stderr
    refused = run_cli(*TINY, "seed=1", f"hydra.run.dir={run_dir}")
    assert refused.returncode == 2 and "holds a completed run with other settings (seed: 0 -> 1)" in refused.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()} == records  # Hydra rewrote them


class MisSizedPerceive(Perceive):
    """A new perceive that declares twice the features it computes."""

    def __init__(self, num_channels: int, *, angle: float = 0.0, rngs=None):
        self.num_channels, self.out_features = num_channels, 2 * num_channels

    def __call__(self, state):
        return state


class ReshapingPerceive(MisSizedPerceive):
    """One that shapes its output by the out_features it declares, as Sobel does: the check's
    trace failed inside ``reshape``, a traceback."""

    def __call__(self, state):
        return state.reshape(*state.shape[:-1], self.out_features)


class UncalledPerceive(Perceive):
    """One whose author forgot ``__call__``: it was the base class's bare NotImplementedError."""

    def __init__(self, num_channels: int, *, angle: float = 0.0, rngs=None):
        self.num_channels, self.out_features = num_channels, num_channels


class WideUpdate(ResidualUpdate):
    """An update that returns one channel too many: it was a traceback from the rollout's scan,
    after ``training in ...``."""

    def __call__(self, state, perception, key):
        return jnp.concatenate([state, state[..., :1]], axis=-1)


class RngsFreePerceive(UncalledPerceive):
    """A constructor without ``rngs``: the line said "unexpected keyword argument 'rngs'", a
    keyword the user never wrote."""

    def __init__(self, num_channels: int):
        self.num_channels, self.out_features = num_channels, num_channels


class AutodiffUpdate(ResidualUpdate):
    """A researcher's own update with a step of its own, which the fast paths do not compute."""

    def __call__(self, state, perception, key):
        return super().__call__(state, perception, key)


class OwnDeltaUpdate(ResidualUpdate):
    """A researcher's own change per cell in the residual update's step: the fast paths' (its
    ``delta`` differentiated by autodiff there)."""

    def delta(self, perception):
        return super().delta(perception) * 0.5


def test_an_update_without_the_fast_paths_is_noted_once(capsys):
    _, model, _ = build(compose(*TINY, "update._target_=test_cli.AutodiffUpdate"))
    assert not model.uses_manual_vjp and not model.compacts(10**6)
    assert capsys.readouterr().err == (
        "note: AutodiffUpdate trains by autodiff of its step, on every cell; the manual step VJP and "
        "active cells are the residual update's, and its subclasses' that keep its apply and __call__ "
        "(trainer.remat=true saves memory)\n"
    )
    for residual in ("OwnDeltaUpdate", "ResidualUpdate"):  # no note
        _, model, _ = build(compose(*TINY, f"update._target_=test_cli.{residual}"))
        assert model.uses_manual_vjp and model.can_compact
        assert capsys.readouterr().err == ""


def test_the_fused_kernels_off_a_gpu_are_noted(capsys):
    build(compose(*TINY, "kernel=pallas"))
    assert capsys.readouterr().err == (
        "note: kernel=pallas runs interpreted off a GPU (slow, for tests); kernel=xla is the fast path here\n"
    )


#: Mistakes nca_lab's own checks catch while building the run (``train.run.build``): each is a
#: one-line ConfigError, which ``python -m nca_lab`` prints as ``error: ...`` with exit status 2.
#: Checked in-process; two of them also go through the command (``BAD_INPUTS``).
BAD_SETTINGS = [
    (["task.target=notanemoji"], "unknown emoji"),
    (["task.target=/no/such/picture.png"], "image not found"),
    (["task.target_size=0"], "target_size must be positive"),
    (["trainer.batch_size=0"], "trainer.batch_size must be an integer >= 1, got 0"),
    (["trainer.batch_size=2.5"], "trainer.batch_size must be an integer >= 1, got 2.5"),
    (["trainer.steps=-1"], "trainer.steps must be an integer >= 1, got -1"),
    (["trainer.learning_rate=0"], "trainer.learning_rate must be positive (or a schedule), got 0"),
    (["trainer.learning_rate.factor=-1"], "trainer.learning_rate.factor must be positive, got -1"),  # optax's words
    (["trainer.learning_rate.boundaries=abc"], "trainer.learning_rate.boundaries must be a non-empty list of steps"),
    (["trainer.learning_rate.boundaries=[]"], "(a constant rate is trainer.learning_rate=<value>), got []"),
    (["num_channels=0"], "num_channels"),
    (["update.fire_rate=0"], "fire_rate must be in (0, 1]"),
    (["update.fire_rate=1.5"], "fire_rate must be in (0, 1]"),
    (["trainer.rollout_steps=5.5"], "rollout_steps must be [low, high] with 0 < low <= high, or one length (trainer"),
    (["trainer.rollout_steps=[10]"], "or one length (trainer.rollout_steps=64, no brackets), got [10]"),
    (["trainer.rollout_steps=[10,5]"], "rollout_steps"),
    (["trainer.rollout_steps=[true,3]"], "rollout_steps must be [low, high] with 0 < low <= high"),  # True was 1
    (["trainer.learning_rate=true"], "trainer.learning_rate must be positive (or a schedule), got True"),
    (["perceive.mode=dilated", "perceive=learned"], "perceive.mode"),
    (["+task.colour=red"], "unknown setting task.colour (the task settings: target, target_size, padding,"),
    (["+perceive.colour=red"], "unknown setting perceive.colour (the perceive settings: angle)"),
    (["+update.hiden_sizes=[3]"], "unknown setting update.hiden_sizes (did you mean update.hidden_sizes?)"),
    (["+trainer.step=3"], "unknown setting trainer.step (did you mean trainer.steps?)"),  # was Python's words
    (
        ["+trainer.optimizer.b3=1"],
        "unknown setting trainer.optimizer.b3 (the trainer.optimizer settings: learning_rate, gradient,",
    ),
    (["+trainer.learning_rate.factr=1"], "unknown setting trainer.learning_rate.factr (did you mean"),
    (["~trainer.batch_size"], "the config has no trainer.batch_size, which Trainer needs (removed by ~trainer.batch"),
    (
        ["perceive._target_=nca_lab.perceive.sobel.SobelPercieve"],  # a page of Hydra's words
        "perceive._target_: cannot import nca_lab.perceive.sobel.SobelPercieve (did you mean "
        "nca_lab.perceive.sobel.SobelPerceive?)",
    ),
    (
        ["perceive._target_=nca_lab.perceive.sobel.Sobel"],  # too short for difflib's ratio: the name it begins
        "perceive._target_: cannot import nca_lab.perceive.sobel.Sobel "
        "(did you mean nca_lab.perceive.sobel.SobelPerceive?)",
    ),
    (["perceive._target_=nosuch.Perceive"], "perceive._target_: cannot import nosuch.Perceive (no module nosuch)"),
    (
        ["perceive._target_=test_cli.MisSizedPerceive.__cal__"],  # attributes of attributes: the path to them
        "perceive._target_: cannot import test_cli.MisSizedPerceive.__cal__ (test_cli.MisSizedPerceive has no __cal__)",
    ),
    (["perceive._target_=nca_lab.perceive.sobel"], "perceive._target_: nca_lab.perceive.sobel is not a class or a"),
    (
        ["perceive._target_=test_cli.MisSizedPerceive"],
        "MisSizedPerceive.out_features is 32, but its perception has 16 features",
    ),
    (
        ["perceive._target_=test_cli.ReshapingPerceive"],
        "ReshapingPerceive fails on inputs of shape [1, 3, 3, 16]: cannot reshape array of shape (1, 3, 3, 16)",
    ),
    (["perceive._target_=test_cli.UncalledPerceive"], "UncalledPerceive must implement __call__"),
    (
        ["perceive._target_=test_cli.RngsFreePerceive", "~perceive.angle"],
        "RngsFreePerceive must take rngs= (nca_lab passes num_channels=, rngs=)",
    ),
    (["perceive._partial_=false"], "the perceive config needs _partial_: true (nca_lab passes num_channels=, rngs=)"),
    (  # was replaced by the code's 16 without a word
        ["+perceive.num_channels=3"],
        "perceive.num_channels is not a setting: nca_lab passes it (num_channels=, rngs=); remove it from the config",
    ),
    (["+task.num_channels=3"], "task.num_channels is not a setting: nca_lab passes it (num_channels=)"),
    (
        ["update._target_=test_cli.WideUpdate"],
        "WideUpdate returns float32[1, 3, 3, 17] for a state float32[1, 3, 3, 16]: the next state must have",
    ),
    (
        ["task=regenerating", "task.pool_size=4", "task.damage_n=2"],
        "damage_n (2) must be smaller than trainer.batch_size",
    ),
    (["task=regenerating", "task.pool_size=1"], "pool_size (1) must be at least trainer.batch_size"),
    (["trainer.steps=abc"], "trainer.steps must be an integer >= 1, got 'abc'"),
    (["num_channels=sixteen"], "num_channels must be an integer >= 4 (RGBA), got 'sixteen'"),
    (["seed=abc"], "seed must be an integer from 0 to 4294967295, got 'abc'"),
    (["seed=4294967296"], "seed must be an integer from 0 to 4294967295, got 4294967296"),  # it would draw as 0
    (["task.target_size=1.5"], "task.target_size must be an integer, got 1.5"),
    (["update.fire_rate=abc"], "update.fire_rate must be a number, got 'abc'"),
    (["task.centre_on_body=no"], "task.centre_on_body must be true or false, got 'no'"),  # bool('no') was True
    (["update.zero_init='false'"], "update.zero_init must be true or false, got 'false'"),
    (["trainer.data_parallel=no"], "trainer.data_parallel must be true or false, got 'no'"),
    (["trainer.remat=maybe"], "trainer.remat must be true or false, got 'maybe'"),
    (["update.hidden_sizes=128"], "update.hidden_sizes must be a list of positive integers, got 128"),
    (["update.hidden_sizes=abc"], "update.hidden_sizes must be a list of positive integers, got 'abc'"),
    (["update.hidden_sizes=[64,1.5]"], "update.hidden_sizes must be a list of positive integers, got [64, 1.5]"),
    (["update.hidden_sizes=[0]"], "update.hidden_sizes must be a list of positive integers, got [0]"),
    (["trainer.optimizer.gradient=sgd"], "trainer.optimizer.gradient must be one of"),
    (["trainer.optimizer.clip_norm=0"], "trainer.optimizer.clip_norm must be positive"),
    (["trainer.keep_last=0"], "trainer.keep_last must be an integer >= 1, got 0"),
    # these trained on without a word (alive_threshold=nan: every cell masked to zero from the first step)
    (["task.alive_threshold=nan"], "task.alive_threshold must be below the seed's alpha (1: else nothing lives) or"),
    (["task.alive_threshold=1"], "task.alive_threshold must be below the seed's alpha (1: else nothing lives) or"),
    (["trainer.optimizer.b1=2"], "trainer.optimizer.b1 must be in [0, 1), got 2"),
    (["trainer.optimizer.b2=nan"], "trainer.optimizer.b2 must be in [0, 1), got nan"),
    (["trainer.optimizer.eps=0"], "trainer.optimizer.eps must be a positive finite number, got 0"),
    (["trainer.optimizer.b1=abc"], "trainer.optimizer.b1 must be in [0, 1), got 'abc'"),  # was Python's '<=' words
    (["trainer.optimizer.b1=true"], "trainer.optimizer.b1 must be in [0, 1), got True"),
    (["update.step_size=nan"], "update.step_size must be a positive finite number, got nan"),
    (["perceive.angle=inf"], "perceive.angle must be a finite number of radians, got inf"),
    (["perceive=attention", "perceive.padding=nan"], "perceive.padding must be a number, null or vitca, got nan"),
    # optional options (``int | None``) too: these were truncated to 2 and 48, and read as 1.0
    (["perceive=learned", "perceive.channel_multiplier=2.5"], "perceive.channel_multiplier must be an integer"),
    (["perceive=attention", "perceive.qkv_features=48.7"], "perceive.qkv_features must be an integer, got 48.7"),
    (["perceive=attention", "perceive.padding=true"], "perceive.padding must be a number, null or vitca, got True"),
    (["kernel=pallas", "perceive=learned"], "kernel=pallas needs the sobel perceive"),
    (["compact_cells=sometimes"], "compact_cells must be auto, true or false, got 'sometimes'"),
    (["compact_cells=0"], "compact_cells must be auto, true or false, got 0"),  # it acted as auto
    (["compact_cells=true", "kernel=pallas"], "compact_cells=true needs kernel=xla"),
    (["perceive=learned", "perceive.features=48"], "perceive.features does not apply to mode=depthwise, got 48"),
    (["+seedd=3"], "unknown setting seedd (did you mean seed?)"),  # Hydra adds it; nothing would read it
    (["+colour=red"], "unknown setting colour (the top-level settings: compact_cells, distributed, experiment,"),
    (["~seed"], "the config has no seed, which nca_lab needs (removed by ~seed?)"),
]

#: Through the command: Hydra's errors, a missing checkpoint (found when training starts), one
#: build error each from the task and the model, and the logger's options (checked before the build).
BAD_INPUTS = [
    BAD_SETTINGS[0],
    BAD_SETTINGS[9],
    (["perceive.no_such_option=1"], "no_such_option"),
    (["trainer.resume=/no/such/run"], "no such checkpoint"),
    (["trainer.bogus=1"], "unknown setting trainer.bogus (the trainer settings: steps, batch_size, rollout_steps,"),
    (["trainer.step=3"], "unknown setting trainer.step (did you mean trainer.steps?)"),  # Hydra: "use +trainer.step"
    (["perceve=learned"], "unknown setting perceve (did you mean perceive?)"),
    (
        ["perceive=nope"],
        "error: In 'config': Could not find 'perceive/nope' Available options in 'perceive': attention learned sobel "
        "(one of your own: DIR/perceive/nope.yaml, with --config-dir DIR or compose(config_dirs=[DIR]))\n",
    ),
    (["experiment=quick_grow"], "error: In 'config': Could not find 'experiment/quick_grow' Available options in"),
    (["task.target=a=b"], "mismatched input"),
    (["+name=foo"], "unknown setting name (did you mean run_name?)"),  # read by nothing: Hydra's own ${hydra:job.name}
    (["trainer.steps=${nosuch}"], "error: Interpolation key 'nosuch' not found (in trainer.steps)\n"),  # in which?
    (
        ["logger=wandb", "logger.mode=ofline"],
        "logger.mode must be one of 'online', 'offline', 'disabled', null, got 'ofline'",
    ),
    (["logger=wandb", "+logger.colour=red"], "unknown setting logger.colour (the logger settings: project,"),
    (["+distributed.colour=red"], "a bad value for distributed: initialize() got an unexpected keyword argument"),
    (["+seedd=3"], "unknown setting seedd (did you mean seed?)"),
    (["~seed"], "the config has no seed, which nca_lab needs (removed by ~seed?)"),
]


def test_one_rollout_length_is_a_fixed_length():
    assert build(compose(*TINY, "trainer.rollout_steps=5"))[2].rollout_steps == (5, 5)


def test_a_value_of_ones_own_that_an_interpolation_reads_is_kept():
    """``+size=8 task.target_size=${size}`` (or ``size: 8`` in a config of one's own) was refused
    as an unknown setting; one that nothing reads still is (``+size=8`` alone, above)."""
    tiny = [o for o in TINY if not o.startswith("task.target_size=")]
    cfg = compose(*tiny, "+grid=9", "+sizes={target: 7}", "task.target_size=${sizes.target}", "task.padding=${grid}")
    task, _, _ = build(cfg)
    assert (cfg.task.target_size, cfg.task.padding) == (7, 9) and task.sample(jax.random.key(0), 1).state.shape[1] == 25
    read = (
        "run_name=${oc.select:label,x}",
        "trainer.steps='${oc.decode:${steps_here}}'",
        "hydra.run.dir=runs/${where}",
    )
    compose(*TINY, "+label=a", "+steps_here=2", "+where=b", *read)  # in a resolver, nested, or by Hydra's settings


def test_a_setting_that_cannot_be_resolved_is_the_runs_one_line_error(tmp_path):
    """``trainer.steps=${nope}``: OmegaConf's error went past the job's own handling, so a sweep's
    jobs printed no line of it, the sweep exited 2 naming none of them, and a refused run left its
    dir (the command's test below)."""
    with pytest.raises(ConfigError, match=r"^Interpolation key 'nope' not found \(in trainer\.steps\)$"):
        run(compose(*TINY, "trainer.steps=${nope}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("overrides", "message"), BAD_SETTINGS)
def test_bad_setting_is_a_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError) as raised:
        build(compose(*TINY, *overrides))
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_input_is_one_clear_line(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "summary.json").exists()
    assert not (run_dir / "config_resolved.yaml").exists()  # refused before the run dir is written


def test_a_mistyped_setting_in_a_sweep_names_the_nearest_one(tmp_path):
    """The nearest setting is found with the sweep's other settings at their first values."""
    result = run_cli("-m", "seed=1,2", "trainer.stepz=2", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    assert result.stderr == "error: unknown setting trainer.stepz (did you mean trainer.steps?)\n"


def test_a_sweep_refused_before_its_first_job_leaves_no_sweep_dir(tmp_path):
    """Swept, the mistyped setting is refused once Hydra's sweeper has made the sweep dir
    (``outputs/multirun/<date>/<time>``) and written its ``multirun.yaml``: removed again, as a
    refused run's dir is; a sweep dir that was there before is kept."""
    result = run_cli("-m", "trainer.stepz=2,3", *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: unknown setting trainer.stepz (did you mean trainer.steps?)\n"
    assert list((tmp_path / "outputs").rglob("*")) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    assert run_cli("-m", "trainer.stepz=2,3", *TINY, f"hydra.sweep.dir={mine}").returncode == 2
    assert (mine / "multirun.yaml").is_file()
    result = run_cli("-m", "trainer.steps=1,2", *TINY, "hydra.sweep.dir=${oops}")  # the sweeper's line alone
    assert (result.returncode, result.stderr) == (2, "error: Interpolation key 'oops' not found (in hydra.sweep.dir)\n")


def test_a_mistyped_setting_of_ones_own_config_dir_is_named_from_it(tmp_path, monkeypatch):
    """With ``--config-dir``, the hint came from nca_lab's own configs: Hydra's ``+key`` advice for
    a user's option, or "unknown setting" with the package sobel's settings for an option the
    user's class takes."""
    from nca_lab.config import mistyped_setting

    conf = tmp_path / "zoë's, conf"  # quoted for Hydra's grammar, which has no such unquoted value
    (conf / "perceive").mkdir(parents=True)
    (conf / "perceive" / "gained.yaml").write_text("_target_: gained.GainedSobel\n_partial_: true\n")
    (tmp_path / "gained.py").write_text(
        "from nca_lab.perceive.sobel import SobelPerceive\n\n\nclass GainedSobel(SobelPerceive):\n"
        "    def __init__(self, num_channels, *, gain: float = 1.0, **kwargs):\n"
        "        super().__init__(num_channels, **kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for flags in (["--config-dir", str(conf)], [f"-cd={conf}"]):
        argv = [*flags, "perceive=gained", "perceive.gainn=2"]
        assert mistyped_setting("perceive.gainn", argv) == (
            "unknown setting perceive.gainn (did you mean perceive.gain? not in its yaml: +perceive.gain=...)"
        )
        assert mistyped_setting("perceive.gain", [*flags, "perceive=gained", "perceive.gain=2"]) is None  # Hydra's +


def test_a_setting_one_job_of_a_sweep_lacks_names_that_job():
    """``-m perceive=sobel,learned perceive.angle=1``: the sobel perceive has an angle, the
    learned one not; the hint listed the learned one's settings without saying which job."""
    from nca_lab.config import mistyped_setting

    assert mistyped_setting("perceive.angle", ["-m", "seed=0,1", "perceive=sobel,learned", "perceive.angle=1"]) == (
        "unknown setting perceive.angle in the sweep's job perceive=learned (the perceive settings: mode, "
        "channel_multiplier, features, init, use_bias)"
    )


def test_a_setting_an_experiment_made_for_another_group_says_so(tmp_path):
    """It was "unknown setting task.target_size (did you mean task.patch_size?)": a setting the
    user never wrote, with a hint at another."""
    result = run_cli("experiment=quick_growing", "task=mnist_inpainting", "logger=none", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: unknown setting task.target_size: experiment=quick_growing sets it for task=growing "
        "(drop experiment= for another task)\n"
    )


def test_only_a_preset_setting_for_a_group_chosen_otherwise_is_blamed_on_the_experiment():
    from nca_lab.config import set_by_experiment

    unknown = "unknown setting task.target_size (did you mean task.patch_size?)"
    other_task = {"experiment": "quick_growing", "task": "mnist_inpainting"}
    assert set_by_experiment(unknown, other_task).startswith("unknown setting task.target_size: experiment=quick")
    own_task = {"experiment": "quick_growing", "task": "growing"}  # a typo of the preset's: the hint serves
    assert set_by_experiment(unknown, own_task) == unknown
    not_in_preset = "unknown setting task.colour (the task settings: ...)"
    assert set_by_experiment(not_in_preset, other_task) == not_in_preset
    assert set_by_experiment(unknown, {"experiment": "no_such_preset", "task": "x"}) == unknown


HYDRA_REFUSALS = {  # raised by Hydra before any job runs: each was a traceback and exit 1
    "a missing --config-dir": (
        ["--config-dir", "no_such_dir", "--cfg", "job"],
        "error: Additional config directory '{cwd}/no_such_dir' not found",
    ),
    "a group set to null": (
        ["experiment=null", "--cfg", "job"],
        "error: Config group override must be a string or a list. Got NoneType (to leave out the experiment "
        "group: ~experiment)",
    ),
    "-m with --cfg": (["-m", "--cfg", "job", "seed=1,2"], "error: Only one of --run, --multirun, --cfg, --info and"),
    "a sweep the launcher cannot run": (
        ["-m", "logger=none", "trainer.learning_rate=interval(1e-3,2e-3)"],
        "error: BasicSweeper does not support sweep type : INTERVAL_SWEEP",
    ),
}


@pytest.mark.parametrize("case", HYDRA_REFUSALS)
def test_what_hydra_refuses_before_a_job_runs_is_one_line_and_exit_2(case, tmp_path):
    args, message = HYDRA_REFUSALS[case]
    result = run_cli(*args, cwd=tmp_path)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr[-2000:]
    assert result.stderr.startswith(message.format(cwd=tmp_path))
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.json*"))


def test_hydra_job_settings_a_user_brings_along_train(tmp_path):
    """``hydra/job_logging=disabled`` (or ``stdout``): the config routed Orbax's reports to a
    ``file`` handler those options do not have, a traceback before the job started.
    ``hydra.job.chdir=true``: a relative ``task.target`` was looked for in the run dir. A value
    of one's own that only Hydra's settings read (``hydra.run.dir=${where}``) was refused."""
    Image.new("RGBA", (6, 6), (200, 30, 30, 255)).save(tmp_path / "dot.png")
    settings = ("hydra/job_logging=disabled", "hydra.job.chdir=true", "task.target=dot.png")
    settings += ("+where=run", "hydra.run.dir=${where}")
    result = run_cli(*TINY, *settings, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("done: "), result.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "__main__.log").exists()


def test_a_refused_command_removes_the_run_dir_hydra_made_for_it(tmp_path):
    result = run_cli(*TINY, "trainer.steps=0", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: trainer.steps must be")
    assert list((tmp_path / "outputs").rglob("*")) == []  # nor the day's dir, which only it was in
    other = tmp_path / "outputs" / datetime.date.today().isoformat() / "00-00-00"  # a day with another run
    other.mkdir(parents=True)
    assert run_cli(*TINY, "trainer.steps=0", cwd=tmp_path).returncode == 2
    assert sorted((tmp_path / "outputs").rglob("*")) == [other.parent, other]
    assert run_cli(*TINY, "trainer.steps=0", "hydra.job.name=foo", cwd=tmp_path).returncode == 2  # log: foo.log
    assert sorted((tmp_path / "outputs").rglob("*")) == [other.parent, other]
    unresolved = run_cli(*TINY, "trainer.steps=${nope}", cwd=tmp_path)  # refused in the job, as the others
    assert unresolved.stderr == "error: Interpolation key 'nope' not found (in trainer.steps)\n"
    assert sorted((tmp_path / "outputs").rglob("*")) == [other.parent, other]
    named = tmp_path / "mine"  # a run dir named by the user is theirs: kept
    named.mkdir()
    assert run_cli(*TINY, "trainer.steps=0", f"hydra.run.dir={named}").returncode == 2
    assert named.is_dir()


def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_cli(*TINY, f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot write {blocker / 'run'}: Not a directory"
    result = run_cli(*TINY, f"hydra.run.dir={blocker}")  # it said "File exists"
    assert (result.returncode, result.stderr.strip()) == (2, f"error: cannot write {blocker}: a file, not a directory")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("run_dir", ["", "..", "."])
def test_a_run_dir_that_holds_the_current_directory_is_refused(run_dir, tmp_path):
    """``hydra.run.dir=$UNSET``: it trained into the dir the command ran in, among its files."""
    here = tmp_path / "checkout"
    here.mkdir()
    result = run_cli(*TINY, f"hydra.run.dir={run_dir}", cwd=here, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: the run dir {(here / run_dir).resolve()} holds the current directory (an empty hydra.run.dir?): "
        "give the run a dir of its own"
    ]
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["checkout"]


def test_a_run_dir_that_holds_a_run_may_be_the_current_directory(smoke_run, tmp_path):
    """``cd <run>; python -m nca_lab hydra.run.dir=.`` continues that run."""
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    again = run_cli(*TINY, *SMOKE, "hydra.run.dir=.", cwd=run_dir, env={"PYTHONPATH": str(REPO)})
    assert again.returncode == 0 and f"skipped {run_dir}: already completed at step 2" in again.stderr


def test_hydra_full_error_keeps_hydras_full_report(tmp_path):
    result = run_cli(*TINY, "trainer.bogus=1", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "Key 'bogus' is not in struct" in result.stderr


def test_hydra_full_error_keeps_the_traceback_of_nca_labs_errors_too(tmp_path):
    """Hydra's message says to set it, and a new module's author needs the frame where their
    constructor failed: it was one line all the same."""
    result = run_cli(*TINY, "update.fire_rate=1.5", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "residual.py" in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("update.fire_rate must be in (0, 1], got 1.5")


def test_unreadable_image_is_one_clear_line(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"garbage")
    result = run_cli(*TINY, f"task.target={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot read image")


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("task.target=🦋", "task.target='🦋'"),
        ("task.target=🦋,🦎,heart.png", "task.target='🦋','🦎',heart.png"),  # a sweep's choices
        ("task.target=bilder/größe.png", "task.target='bilder/größe.png'"),
        ("+task.target='🦋'", "+task.target='🦋'"),  # already quoted
        ("task.target=choice(🦋,🦎)", "task.target=choice(🦋,🦎)"),  # the grammar's own forms are left alone
        ("trainer.steps=5", "trainer.steps=5"),
        ("-m", "-m"),
        ("--config-dir=/home/zoë/conf", "--config-dir=/home/zoë/conf"),  # a flag's path: quotes made it no path
        ("-cd=/home/zoë/conf", "-cd=/home/zoë/conf"),
    ],
)
def test_non_ascii_override_values_are_quoted_for_hydra(arg, parsed):
    from nca_lab.config import quote_non_ascii

    assert quote_non_ascii(arg) == parsed


def test_the_readme_emoji_override_parses():
    result = run_cli("perceive=learned", "trainer.steps=500", "task.target=🦋", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "target: 🦋" in result.stdout and "steps: 500" in result.stdout


def test_help_names_the_command_and_lists_the_groups():
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("python -m nca_lab [overrides]: train a Neural Cellular Automaton")
    assert "perceive: attention, learned, sobel" in result.stdout and "__main__" not in result.stdout


def test_help_into_a_pipe_closed_early_says_nothing_more():
    """``python -m nca_lab --help | head -2``: the reader stops early; no ``error: Broken pipe``."""
    read, write = os.pipe()
    os.close(read)  # as head's end once it has read enough: every write fails
    result = subprocess.run(
        [sys.executable, "-m", "nca_lab", "--help"], cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True
    )
    os.close(write)
    assert (result.returncode, result.stderr) == (1, "")


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_ctrl_c_while_starting_is_one_line_and_143(delay, tmp_path):
    """Before the training steps, SIGINT stops at once: it was a traceback in an import (0.2 and
    0.7 s in), or swallowed by a garbage-collection callback while the model was built, the
    job training on (1.0 s in). With a JAX cache of its own, empty: from the shared one the
    training steps began 2 s in, unloaded, too close to 1.5 s for a faster machine."""
    own = str(tmp_path / "cache")  # its compiles take seconds: none is cut short (conftest sets JAX's variable)
    cache = {"NCA_LAB_CACHE_DIR": own, "JAX_COMPILATION_CACHE_DIR": own}
    status = interrupted(*TINY, f"hydra.run.dir={tmp_path}", after=delay, env=cache)
    assert status == (143, "stopped: by a signal outside the training steps (nothing to save)\n")


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_exit_1(tmp_path):
    """As on a full disk: Orbax's worker threads log a traceback each, and TensorStore raises a
    ValueError, which was a traceback of some 700 lines. Files here may not exceed 20 kB: the
    update's first kernel (48 x 128 float32) is 24 kB."""

    small_files = (
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)); "
        "sys.argv[0] = 'nca_lab'; runpy.run_module('nca_lab', run_name='__main__')"
    )  # in the child: a preexec_fn would fork this multithreaded (JAX) process
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", small_files, *TINY, f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"},
    )  # fmt: skip  # reads the shared compilation cache, writes none (its files would exceed the limit)
    assert result.returncode == 1
    # Now and then (6 of 26 runs here) TensorStore's threads, completing writes after Orbax closed its
    # event loop, each print a short traceback ("Event loop is closed") before the error line,
    # interleaved piece by piece: those pieces, and only those, are left out.
    rest = EVENT_LOOP_CLOSED_TRACEBACK.sub("", result.stderr)
    lines = [line for line in rest.splitlines() if line.strip(" :")]
    assert len(lines) == 2 and lines[0] == f"training in {run_dir}", result.stderr[-3000:]
    assert lines[-1].startswith(f"error: cannot write checkpoint {run_dir / 'checkpoints' / '2'}: ")
    assert "File too large" in lines[-1]


def test_running_out_of_memory_is_one_line_and_exit_1(tmp_path):
    """A batch too big for the memory was a traceback of some 60 lines ending in XLA's
    ``RESOURCE_EXHAUSTED``. The child may map 4 GiB; the step wants ~11 GiB."""
    little_memory = (
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
        "sys.argv[0] = 'nca_lab'; runpy.run_module('nca_lab', run_name='__main__')"
    )  # in the child, as above
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", little_memory, *TINY, "trainer.batch_size=100000", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 2 and lines[0] == f"training in {run_dir}", result.stderr[-3000:]
    assert re.fullmatch(
        r"error: out of memory \(RESOURCE_EXHAUSTED: Out of memory allocating \d+ bytes\.\): try a smaller "
        r"trainer\.batch_size, grid \(task\.target_size, task\.padding\) or trainer\.rollout_steps",
        lines[1],
    )


#: The pieces of the traceback TensorStore's threads print when Orbax's event loop closed first.
EVENT_LOOP_CLOSED_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\):|File \"[^\"]*asyncio/base_events\.py\", line \d+, in \w+"
    r"|self\._check_closed\(\)|raise RuntimeError\('Event loop is closed'\)|RuntimeError|Event loop is closed"
)


def test_compose_from_python_takes_an_emoji_as_the_command_does():
    assert compose("task.target=🦋").task.target == "🦋"


def test_a_run_dir_with_a_backslash_is_refused_before_training(tmp_path):
    run_dir = tmp_path / "a\\b"
    result = run_cli(*TINY, f"hydra.run.dir='{run_dir}'")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {run_dir}: Orbax cannot keep checkpoints under a path with a backslash"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "manifest.json").exists()


def test_an_error_a_job_raised_in_another_process_is_told_from_hydras_own():
    """Under submitit a job's bug reaches the command through Hydra's ``JobReturn``; it was
    taken for one of Hydra's before any job, one line (``error: 'lr'``) and exit 2."""
    from hydra.core.utils import JobReturn, JobStatus

    from nca_lab.__main__ import _raised_by_a_job

    result = JobReturn(status=JobStatus.FAILED, _return_value=KeyError("lr"))
    with pytest.raises(KeyError) as from_a_job:
        result.return_value  # noqa: B018 - the property re-raises the job's exception
    assert _raised_by_a_job(from_a_job.value)
    with pytest.raises(ValueError) as elsewhere:
        int("x")
    assert not _raised_by_a_job(elsewhere.value)


def test_the_command_keeps_the_traceback_of_a_jobs_error_that_hydra_raises_again(monkeypatch):
    import logging

    from hydra.core.utils import JobReturn, JobStatus

    import nca_lab.__main__ as app

    def sweep_whose_job_failed_elsewhere():  # what Hydra's launcher does with a submitit job's result
        JobReturn(status=JobStatus.FAILED, _return_value=KeyError("lr")).return_value  # noqa: B018

    monkeypatch.setattr(app, "main", sweep_whose_job_failed_elsewhere)
    monkeypatch.setattr(app, "stop_on_signals", lambda message: None)
    monkeypatch.setattr(app, "_jobs_here", {"ran": 0, "failed": 0})  # no job ran in this process
    monkeypatch.setattr(sys, "argv", ["nca_lab", "-m", "seed=0,1"])
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    for name in ("HYDRA_FULL_ERROR", app.USER_FULL_ERROR):  # the command sets both: restored after the test
        monkeypatch.setenv(name, "0")
    with pytest.raises(KeyError, match="lr"):  # not "error: 'lr'" and exit 2, as an error of Hydra's own
        app.cli()


def test_one_line_names_the_setting_of_an_omegaconf_error_once():
    from nca_lab.errors import one_line

    cfg = OmegaConf.create({"trainer": {"steps": "${nosuch}"}})
    with pytest.raises(Exception) as missing:
        OmegaConf.to_container(cfg, resolve=True)
    assert one_line(missing.value) == "Interpolation key 'nosuch' not found (in trainer.steps)"
    OmegaConf.set_struct(cfg, True)
    with pytest.raises(Exception) as not_in_struct:
        cfg.trainer.stepz = 1
    outer = ValueError("Could not override 'trainer.stepz'.")
    outer.__cause__ = not_in_struct.value  # as Hydra raises it: the outer line names the setting already
    assert one_line(outer) == "Could not override 'trainer.stepz'. (Key 'stepz' is not in struct)"
