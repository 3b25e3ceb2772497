"""Every yaml in conf/ composes, and every group option instantiates into working objects."""

from pathlib import Path

import jax
import pytest
from hydra.utils import instantiate

from nca_lab.config import compose, config_dir
from nca_lab.train.run import build

from nca_testing import TINY, tiny_for_task

CONF = config_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra"))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_the_groups_of_the_brief_exist():
    assert {"perceive", "update", "task", "trainer", "logger"} <= set(GROUPS)
    assert {"sobel", "learned"} <= {o for g, o in OPTIONS if g == "perceive"}
    assert {"default", "quick"} <= {o for g, o in OPTIONS if g == "trainer"}


def test_default_trainer_is_the_papers_setting():
    cfg = compose()
    assert cfg.trainer.steps == 8000 and cfg.trainer.batch_size == 8
    assert list(cfg.trainer.rollout_steps) == [64, 95]  # the notebook: tf.random.uniform([], 64, 96, tf.int32)
    assert cfg.trainer.learning_rate.init_value == pytest.approx(2e-3)
    assert cfg.task.target == "🦎" and cfg.num_channels == 16


@pytest.mark.parametrize(("group", "option"), [o for o in OPTIONS if o[0] != "logger"])
def test_option_composes_and_builds(group, option, tiny_task_overrides):
    task_overrides = tiny_task_overrides.get(option) if group == "task" else None
    base = TINY if task_overrides is None else [o for o in TINY if not o.startswith("task.")]
    if group == "task" and task_overrides is None:  # a new task: TINY's grid options if it has them
        base = tiny_for_task(option)
    cfg = compose(f"{group}={option}", *base, *(task_overrides or []))
    task, model, trainer = build(cfg)
    state = task.sample(jax.random.key(0), 1).state
    assert state.shape[-1] == cfg.num_channels
    out = model.step(state, jax.random.split(jax.random.key(0), 1))
    assert out.shape == state.shape
    assert trainer.steps == 2


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "logger"])
def test_logger_options_instantiate(option, tmp_path):
    """Each logger yaml builds a logger taking what nca_lab passes (a new one too: its own test
    file checks what it writes)."""
    from nca_lab.log.base import Logger

    cfg = compose(f"logger={option}", *(["logger.mode=disabled"] if option == "wandb" else []))
    logger = instantiate(cfg.logger)(config={}, run_dir=tmp_path, name="t", run_id=None)
    logger.log({"loss": 1.0}, 1)
    logger.finish({"loss": 1.0})
    assert isinstance(logger, Logger)
    if option in ("wandb", "none"):
        assert list(tmp_path.iterdir()) == []  # metrics.jsonl is the trainer's; W&B disabled writes nothing


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "update"])
def test_each_grid_of_a_batch_steps_as_it_would_alone(option):
    """``Update``'s promise, one key per grid: a sample's trajectory does not depend on the batch
    it is in (an update drawing its fire mask from the first key for all grids trained on)."""
    import jax.numpy as jnp
    from flax import nnx

    _, model, _ = build(compose(f"update={option}", *TINY))
    params = nnx.state(model.update, nnx.Param)  # random, not the zero last layer: the update must act
    leaves, tree = jax.tree.flatten(params)
    draws = [jax.random.normal(jax.random.key(i), leaf.shape) for i, leaf in enumerate(leaves)]
    nnx.update(model.update, jax.tree.unflatten(tree, draws))
    grids = jax.random.uniform(jax.random.key(1), (3, 6, 6, model.num_channels)).at[..., 3].set(1.0)
    keys = jax.random.split(jax.random.key(2), 3)
    together = model.step(grids, keys)
    for grid, key, stepped in zip(grids, keys, together, strict=True):
        assert jnp.array_equal(model.step(grid, key), stepped)
    assert not jnp.array_equal(together, grids)  # the update acts: the comparison can fail


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds_a_short_run_of_its_task(experiment, tiny_task_overrides):
    data = [o for o in tiny_task_overrides["mnist_inpainting"] if o.startswith("task.data_root=")]
    cfg = compose(f"experiment={experiment}", "logger=none", *(data if "mnist" in experiment else []))
    task, model, trainer = build(cfg)
    assert trainer.steps == cfg.trainer.steps
    kind, _, task_name = experiment.partition("_")
    if kind in ("quick", "ablation"):  # nca_lab's quick_<task> and ablation_<task>: a user's may be named anyhow
        assert cfg.task._target_.startswith(f"nca_lab.tasks.{task_name}.")
        assert 0 < trainer.steps < 8000  # a preset, not the paper's run
    state = task.sample(jax.random.key(0), 2).state
    assert model.step(state, jax.random.split(jax.random.key(0), 2)).shape == state.shape


def test_conf_is_the_one_source_of_truth():
    assert (Path(__file__).resolve().parent.parent / "conf") == CONF


@pytest.mark.parametrize(("launcher", "target"), [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_submitit_launcher_presets_compose(launcher, target):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.timeout_min == 240
    # submitit gives a job the GPUs 0..gpus_per_node-1 (a local job's CUDA_VISIBLE_DEVICES): 0 trained on the CPU
    assert cfg.hydra.launcher.gpus_per_node == 1
    if launcher == "slurm":  # README: a job that times out is requeued
        assert cfg.hydra.launcher.max_num_timeout > 0


def test_a_did_you_mean_needs_three_characters_to_go_by_a_prefix():
    from nca_lab.errors import closest

    names = ["SOBEL_X", "SobelPerceive", "np", "sobel_kernels"]
    assert closest("Sobel", names) == "SobelPerceive"  # too short for difflib's ratio: the name it begins
    assert closest("", names) is None and closest("S", names) is None  # not "np" or a constant


def test_a_group_without_settings_says_so():
    from nca_lab.errors import nearest

    assert nearest("colour", [], "logger") == "logger takes no settings"  # was "the logger settings: "


def test_compose_words_a_mistyped_setting_as_the_command_does():
    """From a notebook it was Hydra's "Could not override ... use +trainer.step=3", a setting nothing reads."""
    from nca_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown setting trainer\.step \(did you mean trainer\.steps\?\)$"):
        compose("trainer.step=3")
    with pytest.raises(ConfigError, match=r"Could not find 'perceive/nope'"):
        compose("perceive=nope")
