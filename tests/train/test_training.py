"""Training end to end in-process: the loss falls, runs are deterministic, NaNs stop cleanly."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from nca_lab.ckpt import RunCheckpointer, step_dirs
from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.log.metrics_file import read_metrics
from nca_lab.tasks.growing import GrowingTask
from nca_lab.train import trainer as trainer_module
from nca_lab.train.model_config import build_model, seed_keys
from nca_lab.train.run import build, load_model
from nca_lab.train.trainer import TrainingDiverged

from nca_testing import TINY


def tiny(*overrides):
    return build(compose(*TINY, *overrides))


def train_losses(run_dir, *overrides):
    task, model, trainer = tiny(*overrides)
    trainer.fit(model, task, key=jax.random.key(0), run_dir=run_dir)
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r], model


def test_a_short_training_run_lowers_the_loss(tmp_path):
    losses, _ = train_losses(
        tmp_path,
        "trainer.steps=60",
        "trainer.log_every=1",
        "trainer.batch_size=4",
        "trainer.rollout_steps=[8,12]",
        "trainer.checkpoint_every=0",
        "trainer.render_every=0",
    )
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


def test_same_seed_same_run(tmp_path):
    a, model_a = train_losses(tmp_path / "a", "trainer.steps=3", "trainer.log_every=1")
    b, model_b = train_losses(tmp_path / "b", "trainer.steps=3", "trainer.log_every=1")
    assert a == b
    jax.tree.map(np.testing.assert_array_equal, jax.tree.leaves(model_a), jax.tree.leaves(model_b))
    timed = [r["step"] for r in read_metrics(tmp_path / "a") if "steps_per_s" in r]
    assert timed == [2, 3]  # not the first line: its one step was mostly the compile, which squashed the chart


@pytest.mark.parametrize("gradient", ["clip", "none"])
def test_gradient_transforms_train(tmp_path, gradient):
    losses, _ = train_losses(
        tmp_path, "trainer.steps=2", "trainer.log_every=1", f"trainer.optimizer.gradient={gradient}"
    )
    assert all(np.isfinite(losses))


def test_a_non_finite_update_stops_before_anything_poisoned_is_saved(tmp_path):
    """Also before it is evaluated or rendered: the NaN model's evaluation went into
    ``metrics.jsonl`` and the logger (W&B), and its picture into ``renders/``, checked for
    divergence only at the next log line or checkpoint after them."""
    steps = ("trainer.steps=6", "trainer.checkpoint_every=2", "trainer.log_every=10")
    task, model, trainer = tiny(*steps, "trainer.eval_every=4", "trainer.render_every=4")
    trainer.learning_rate = lambda count: jnp.where(count >= 3, jnp.nan, 1e-3)  # the 4th update is NaN
    with pytest.raises(TrainingDiverged, match="diverged at step 4"):
        trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    assert not [record for record in read_metrics(tmp_path) if record["step"] == 4]
    assert not (tmp_path / "renders" / "4").exists()
    checkpoints = RunCheckpointer(tmp_path / "checkpoints", create=False)
    assert checkpoints.latest_step() == 2
    restored = build(compose(*TINY))[1]
    params = nnx.state(restored, nnx.Param)
    nnx.update(restored, jax.tree.map(lambda leaf: jnp.full_like(leaf, jnp.nan), params))
    checkpoints.restore_model(restored)  # over NaN weights: what it restores must be finite
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(nnx.state(restored, nnx.Param)))
    assert not (tmp_path / "summary.json").exists()


def test_summary_is_written_last_and_holds_eval_metrics(tmp_path):
    train_losses(tmp_path, "trainer.steps=2")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 2 and summary["eval/mse"] > 0 and summary["eval/mse_2x"] > 0


def test_checkpoints_keep_the_models_alive_threshold(tmp_path):
    """What ``load_model`` rebuilds the model with: the model's, which a library caller may set
    apart from the task's (the checkpoints held the task's)."""
    task, model, trainer = tiny("trainer.steps=1", "trainer.render_every=0")
    model.alive_threshold = 0.2
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    assert task.alive_threshold == 0.1
    assert RunCheckpointer(tmp_path / "checkpoints", create=False).metadata()["alive_threshold"] == 0.2


def test_a_model_that_would_update_the_tasks_input_is_refused(tmp_path):
    """A task with ``fixed_input`` keeps its input in the last channels; a model that updates
    them (built by hand for it) would learn to overwrite what it is meant to keep seeing."""
    task, model, trainer = tiny("task=diffusing", "task.fixed_input=true")
    assert task.fixed_channels == model.fixed_channels == 4
    model.fixed_channels = 0
    with pytest.raises(ConfigError, match=r"keeps its input in the last 4 channels.*NCA\(\.\.\., fixed_channels="):
        trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_resumes_only_into_a_model_that_steps_as_it_was_trained(tmp_path):
    """``fit`` itself (a notebook's, without the app's settings check): a run saved without fixed
    input channels (as every run before them) is not continued by a model that holds 4, nor one
    trained without alive masking by a model with it."""
    task, model, trainer = tiny("task=diffusing", "trainer.steps=1", "trainer.render_every=0")
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    task, model, trainer = tiny("task=diffusing", "task.fixed_input=true", "trainer.steps=2")
    with pytest.raises(ConfigError, match=r"steps otherwise \(fixed_channels: 0 -> 4\): resume it with its own task"):
        trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    task, model, trainer = tiny("task=diffusing", "trainer.steps=2")
    model.alive_threshold = 0.1  # a notebook's growing model on the denoiser's checkpoint
    with pytest.raises(ConfigError, match=r"steps otherwise \(alive_threshold: None -> 0\.1\): resume it"):
        trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)


def test_a_seeds_streams_share_no_bits():
    """The update's and the perceive's weight keys and the training keys are all different."""
    keys = seed_keys(0)
    drawn = []
    for stream in (keys.update, keys.perceive):
        rngs = nnx.Rngs(params=stream)
        drawn += [bytes(np.asarray(jax.random.key_data(rngs.params()))) for _ in range(64)]
    drawn += [bytes(np.asarray(k)) for k in jax.random.key_data(jax.random.split(keys.run, 64))]
    assert len(set(drawn)) == len(drawn) == 3 * 64


def test_a_perceive_ablation_starts_every_update_from_the_same_weights():
    """Perceive and update drew from one stream: a perceive with random weights (attention,
    ``learned init=random``) moved the update's first draws, so an ablation's runs differed in
    the update too."""
    updates = []
    for perceive in ("perceive=sobel", "perceive=attention", "perceive=learned", "perceive=learned"):
        extra = ["perceive.init=random"] if len(updates) == 3 else []
        model = build_model(compose(*TINY, perceive, *extra), alive_threshold=0.1)
        updates.append(nnx.state(model.update, nnx.Param))
    for other in updates[1:]:
        jax.tree.map(np.testing.assert_array_equal, other, updates[0])
    attention = build_model(compose(*TINY, "perceive=attention"), alive_threshold=0.1)
    seed_1 = build_model(compose(*TINY, "perceive=attention", "seed=1"), alive_threshold=0.1)
    assert not np.array_equal(attention.perceive.key_offsets[...], seed_1.perceive.key_offsets[...])
    assert not np.array_equal(seed_1.update.hidden[0].kernel[...], updates[0]["hidden"][0]["kernel"][...])


def test_build_takes_the_plain_config_fit_saves():
    """``build(OmegaConf.to_container(cfg))`` was "'dict' object has no attribute 'num_channels'"."""
    cfg = compose(*TINY)
    task, model, _ = build(OmegaConf.to_container(cfg, resolve=True))
    assert task.grid_shape == build(cfg)[0].grid_shape and model.num_channels == cfg.num_channels


def test_a_config_that_is_not_json_is_refused_before_the_first_step(tmp_path):
    """A DictConfig from compose() trained, then failed at the first checkpoint save, inside Orbax's threads."""
    cfg = compose(*TINY)
    task, model, trainer = build(cfg)
    with pytest.raises(ConfigError, match=r"config= must be plain JSON data, .*OmegaConf.to_container"):
        trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path, config=cfg)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_damage_without_a_pool_is_refused():
    """Only pool samples are damaged: a task's damage_n without a pool was ignored without a word."""
    task, _, trainer = tiny()
    task.damage_n = 1
    with pytest.raises(ConfigError, match=r"^task.damage_n \(1\) needs a sample pool: task.pool_size > 0$"):
        trainer.check(task)


def test_each_step_draws_from_a_key_of_its_own(tmp_path, monkeypatch):
    """One key for every step drew the same batch, rollout length and fire masks each time;
    training still went down, and resumed runs still matched uninterrupted ones."""
    keys, make = [], trainer_module.make_train_step

    def recording(*args, **kwargs):
        step = make(*args, **kwargs)

        def recorded(model, optimizer, pool, key):
            keys.append(tuple(np.asarray(jax.random.key_data(key)).tolist()))
            return step(model, optimizer, pool, key)

        return recorded

    monkeypatch.setattr(trainer_module, "make_train_step", recording)
    task, model, trainer = tiny("trainer.steps=3")
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    assert len(keys) == 3 and len(set(keys)) == 3


def test_fit_takes_one_prng_key(tmp_path):
    """``fit(key=0)`` and a batch of keys were JAX's errors from deep in ``fit``; a classic
    ``PRNGKey`` trains as the typed key of its data."""
    cfg = compose(*TINY)
    task, model, trainer = build(cfg)
    for key, got in ((0, "got int"), (jax.random.split(jax.random.key(0), 2), r"got shape \(2,\), dtype key<fry>")):
        with pytest.raises(TypeError, match=rf"key must be one PRNG key, jax.random.key\(seed\); {got}"):
            trainer.fit(model, task, key=key, run_dir=tmp_path)
    assert trainer.fit(model, task, key=jax.random.PRNGKey(0), run_dir=tmp_path)["step"] == cfg.trainer.steps


def test_a_config_that_builds_another_model_is_refused_before_the_first_step(tmp_path):
    """``load_model`` rebuilds the model from ``config=``: a hand-built model saved with another
    model's config loaded as that one (here, another fire rate) without a word."""
    cfg = compose(*TINY)
    task, model, trainer = build(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    for change, part in (("update.fire_rate=0.9", "update"), ("perceive.angle=0.5", "perceive")):
        other = build_model(compose(*TINY, change), task.alive_threshold)
        message = rf"^config= builds a {part} \(\w+\) of other settings or sizes than the model's \(\w+\): load_model"
        with pytest.raises(ConfigError, match=message):
            trainer.fit(other, task, key=jax.random.key(0), run_dir=tmp_path, config=config)
    with pytest.raises(ConfigError, match=r"^config= does not build a model \(.*num_channels"):
        trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path, config={"seed": 0})
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    reseeded = build_model(compose(*TINY, "seed=1"), task.alive_threshold)  # other weights, the same model
    trainer.fit(reseeded, task, key=jax.random.key(0), run_dir=tmp_path, config=config)
    np.testing.assert_array_equal(load_model(tmp_path).update.out.kernel[...], reseeded.update.out.kernel[...])


def test_numpy_integers_are_counts(tmp_path):
    """A notebook sweeps with ``np.arange``: its integers were refused as counts ("must be an
    integer >= 1, got np.int64(2)") and as a rollout's length."""
    from nca_lab.nca import grow
    from nca_lab.tasks.growing import seed_state
    from nca_lab.train.trainer import Trainer

    task, model, trainer = tiny()
    counts = {"steps": 2, "batch_size": trainer.batch_size, "log_every": 1, "checkpoint_every": 2}
    trainer = Trainer(
        **{name: np.int64(value) for name, value in counts.items()},
        learning_rate=trainer.learning_rate,
        optimizer=trainer.optimizer,
        rollout_steps=np.array(trainer.rollout_steps),
        progress=False,
    )
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 2
    state = seed_state((np.int64(8), np.int64(8)), model.num_channels)
    final, frames = grow(model, state, jax.random.key(1), np.int64(4), frame_every=np.int32(2))
    assert frames.shape[0] == 3 and final.shape == frames.shape[1:]


class ScalarLossTask(GrowingTask):
    """A researcher's task whose loss is the batch's mean, not one per sample."""

    def loss(self, state, target):
        return jnp.mean(super().loss(state, target))


class ShortStateTask(GrowingTask):
    """A researcher's task whose states lack a channel."""

    def sample(self, key, n):
        batch = super().sample(key, n)
        return batch._replace(state=batch.state[..., :-1])


class SharedTargetTask(GrowingTask):
    """A researcher's task whose targets are one for the batch, without its axis."""

    def sample(self, key, n):
        batch = super().sample(key, n)
        return batch._replace(target={"picture": batch.target[0]})


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            "ScalarLossTask",
            r"ScalarLossTask.loss gives shape \(\) for 2 samples; it must be one loss per sample, \(2,\)",
        ),
        (
            "ShortStateTask",
            r"ShortStateTask.sample\(key, 2\) gives states of shape \(2, 12, 12, 15\); "
            r"the trainer needs \(2, H, W, 16\)",
        ),
        (
            "SharedTargetTask",
            r"SharedTargetTask.sample\(key, 2\) gives targets of shape \(12, 12, 4\); "
            r"the trainer needs a leading axis of 2, one target per sample",
        ),
    ],
)
def test_a_task_of_the_wrong_shapes_is_one_line_before_the_model(task, message):
    """A per-batch loss trained without a pool and, with one, failed in the pool's sort:
    "axis -1 is out of bounds for array of dimension 0", naming no loss."""
    with pytest.raises(ConfigError, match=f"^{message}$"):
        tiny(f"task._target_=test_training.{task}")


def test_evaluations_and_renderings_follow_their_schedules_at_the_horizon(tmp_path, monkeypatch):
    """``eval_every`` and ``render_every`` steps (and the last) evaluate and render over the
    horizon, the longest training rollout (TINY's rollout_steps=[2,3]: 3)."""
    task, model, trainer = tiny("trainer.steps=4", "trainer.eval_every=2", "trainer.render_every=3")
    horizons = []

    def spied(method):
        def call(model, key, horizon, *args, **kwargs):
            horizons.append(horizon)
            return method(model, key, horizon, *args, **kwargs)

        return call

    for name in ("evaluate", "render"):
        monkeypatch.setattr(task, name, spied(getattr(task, name)))
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path) if "eval/mse" in r] == [2, 4]
    assert sorted(int(p.name) for p in (tmp_path / "renders").iterdir()) == [3, 4]
    assert horizons and set(horizons) == {3}


@pytest.mark.parametrize(("keep_best", "kept"), [(False, [4]), (True, [3, 4])])
def test_checkpoints_keep_the_last_and_the_best_as_set(tmp_path, keep_best, kept, monkeypatch):
    task, model, trainer = tiny(
        "trainer.steps=4", "trainer.checkpoint_every=1", "trainer.keep_last=1", f"trainer.keep_best={keep_best}"
    )
    losses = iter([0.5, 0.4, 0.1, 0.3])  # step 3 the best, step 4 the last
    make = trainer_module.make_train_step

    def with_losses(*args, **kwargs):
        step = make(*args, **kwargs)

        def stepped(*step_args):
            pool, metrics = step(*step_args)
            return pool, {**metrics, "loss": jnp.float32(next(losses))}

        return stepped

    monkeypatch.setattr(trainer_module, "make_train_step", with_losses)
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    assert step_dirs(tmp_path / "checkpoints") == kept


def test_init_from_starts_from_the_weights_of_the_other_run(tmp_path, monkeypatch):
    task, model, trainer = tiny("trainer.steps=2")
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path / "first")
    task, model, trainer = tiny("trainer.steps=1", f"trainer.init_from={tmp_path / 'first'}")
    first_step = []
    make = trainer_module.make_train_step

    def watched(*args, **kwargs):
        step = make(*args, **kwargs)

        def stepped(model, *rest):
            first_step.append(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
            return step(model, *rest)

        return stepped

    monkeypatch.setattr(trainer_module, "make_train_step", watched)
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path / "second")
    _, saved, _ = tiny("trainer.steps=2")
    RunCheckpointer.find(tmp_path / "first").restore_model(saved)
    jax.tree.map(np.testing.assert_array_equal, first_step[0], jax.tree.map(np.asarray, nnx.state(saved, nnx.Param)))


def test_steps_per_s_is_steps_over_the_seconds_between_log_lines(tmp_path, monkeypatch):
    task, model, trainer = tiny("trainer.steps=5", "trainer.log_every=2")
    clock = iter(range(0, 100, 4))  # each fetch of metrics 4 s after the last
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    trainer.fit(model, task, key=jax.random.key(0), run_dir=tmp_path)
    speeds = {r["step"]: r.get("steps_per_s") for r in read_metrics(tmp_path) if "loss" in r}
    assert speeds == {1: None, 2: 1 / 4, 4: 2 / 4, 5: 1 / 4}  # the first line's steps include the compile
