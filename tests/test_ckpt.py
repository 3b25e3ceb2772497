"""Orbax checkpoints: full round trip, warm start, bad paths and incompatible configs."""

import gc
import logging
import re
import shutil
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.ckpt import RunCheckpointer
from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.train.pool import init_pool
from nca_lab.train.run import build, load_model
from nca_lab.train.step import make_train_step

from nca_testing import TINY


def trained_state(*overrides, steps=2):
    task, model, trainer = build(compose(*TINY, *overrides))
    optimizer = nnx.Optimizer(model, trainer.optimizer(trainer.learning_rate), wrt=nnx.Param)
    pool = init_pool(task, jax.random.key(1), 6)
    step = make_train_step(task, batch_size=2, rollout_steps=(2, 3))
    for i in range(steps):
        _, _ = step(model, optimizer, None, jax.random.key(i))
    return task, model, optimizer, pool


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(tree))]


# A sweep job's run dir is named by its overrides: brackets from list values (Orbax's OCDBT
# format found its files with a glob, so such checkpoints saved but did not load).
@pytest.mark.parametrize("run_dir", ["run", "seed=0,trainer.rollout_steps=[16,24]"])
def test_round_trip_of_params_optimizer_pool_rng_and_step(tmp_path, run_dir):
    tmp_path = tmp_path / run_dir
    _, model, optimizer, pool = trained_state()
    key = jax.random.key(42)
    checkpointer = RunCheckpointer(tmp_path / "checkpoints")
    checkpointer.save(
        7, model=model, optimizer=optimizer, pool=pool, key=key, metadata={"loss": 0.5, "config": {"a": 1}}
    )
    _, fresh_model, fresh_optimizer, fresh_pool = trained_state(steps=0)
    fresh_pool = fresh_pool._replace(state=jnp.zeros_like(fresh_pool.state))
    step, restored_pool, restored_key, meta = RunCheckpointer.find(tmp_path).restore(
        fresh_model, fresh_optimizer, fresh_pool
    )
    assert step == 7 and meta["config"] == {"a": 1} and meta["loss"] == 0.5
    for a, b in zip(leaves(model) + leaves(optimizer), leaves(fresh_model) + leaves(fresh_optimizer), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(restored_pool.state, pool.state)
    np.testing.assert_array_equal(jax.random.key_data(restored_key), jax.random.key_data(key))


def test_a_save_logs_no_warning(tmp_path, caplog):
    _, model, optimizer, _ = trained_state(steps=0)
    with caplog.at_level(logging.WARNING):
        RunCheckpointer(tmp_path).save(
            1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
        )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_keeps_the_last_k_and_the_best_also_across_a_resume(tmp_path):
    _, model, optimizer, _ = trained_state(steps=0)

    def save(checkpointer, step, loss):
        checkpointer.save(
            step, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": loss}
        )

    checkpointer = RunCheckpointer(tmp_path, keep_last=2)
    for step, loss in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.6), (5, 0.7)]:
        save(checkpointer, step, loss)
    assert sorted(checkpointer.manager.all_steps()) == [2, 4, 5]
    resumed = RunCheckpointer(tmp_path, keep_last=2)  # a new process: the losses come from disk
    save(resumed, 6, 0.8)
    assert sorted(resumed.manager.all_steps()) == [2, 5, 6]  # step 2's loss, 0.1, still the best
    save(resumed, 7, 0.05)
    assert sorted(resumed.manager.all_steps()) == [6, 7]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["6", "7"]  # the dropped ones deleted


def test_a_kill_while_a_dropped_checkpoint_is_deleted_leaves_no_step_dir_behind(tmp_path, monkeypatch):
    """Orbax deleted dropped checkpoints in place: a kill mid-way left ``checkpoints/56`` holding a
    file or two, read as a damaged checkpoint that a resume would fall back to. Now it is moved
    out of the step dirs first, in one rename, and deleted there."""
    _, model, optimizer, _ = trained_state(steps=0)
    checkpointer = RunCheckpointer(tmp_path, keep_last=1, keep_best=False)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # killed before the delete ends
    for step in (1, 2):
        checkpointer.save(
            step, model=model, optimizer=optimizer, pool=None, key=jax.random.key(step), metadata={"loss": 1.0}
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == [".dropped", "2"]
    assert (tmp_path / ".dropped" / "1" / "model").is_dir()
    found = RunCheckpointer.find(tmp_path)
    assert found.manager.all_steps() == [2] and found.restore(model, optimizer, None)[0] == 2
    monkeypatch.undo()
    RunCheckpointer(tmp_path, keep_last=1, keep_best=False)  # the next writer deletes them
    assert sorted(path.name for path in tmp_path.iterdir()) == ["2"]


def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    _, model, optimizer, _ = trained_state()
    checkpointer = RunCheckpointer(tmp_path / "checkpoints")
    checkpointer.save(3, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0})
    partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"  # what a kill mid-save leaves
    (partial / "model").mkdir(parents=True)
    (partial / "model" / "junk").write_bytes(b"\0" * 10)
    found = RunCheckpointer.find(tmp_path)
    assert found.latest_step() == 3
    _, untrained, _, _ = trained_state(steps=0)
    found.restore_model(untrained)  # into another model: a restore that did nothing would show
    for a, b in zip(leaves(model), leaves(untrained), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_model_of_a_run_dir(tmp_path):
    _, model, optimizer, _ = trained_state()
    cfg = compose(*TINY)
    from omegaconf import OmegaConf

    RunCheckpointer(tmp_path / "checkpoints").save(
        2,
        model=model,
        optimizer=optimizer,
        pool=None,
        key=jax.random.key(0),
        metadata={"loss": 0.1, "config": OmegaConf.to_container(cfg, resolve=True), "alive_threshold": 0.1},
    )
    loaded = load_model(tmp_path)
    for a, b in zip(leaves(model), leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match=r"no checkpoint of step 7 \(there are \[2\]\)"):  # was a FileNotFoundError
        load_model(tmp_path, step=7)
    other = OmegaConf.to_container(compose(*TINY, "update.hidden_sizes=[32]"), resolve=True)
    RunCheckpointer(tmp_path / "checkpoints").save(
        3, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 0.1, "config": other}
    )
    # Trainer.fit given the config= of another model: "does not fit this config" read as the user's
    with pytest.raises(ConfigError, match=r"/3 does not fit the config saved with it \(incompatible shapes, .+"
                       r"checkpoint \(128,\), the config saved with it \(32,\)\)$"):  # fmt: skip
        load_model(tmp_path)


def test_incompatible_config_is_one_clear_error(tmp_path):
    _, model, optimizer, _ = trained_state(steps=0)
    RunCheckpointer(tmp_path).save(
        1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
    )
    _, wider, _, _ = trained_state("update.hidden_sizes=[32]", steps=0)
    with pytest.raises(ConfigError, match="incompatible shapes"):
        RunCheckpointer.find(tmp_path).restore_model(wider)
    _, deeper, _, _ = trained_state("update.hidden_sizes=[32,32]", steps=0)
    with pytest.raises(ConfigError, match=r"different model structure: update\.hidden\.1\.bias only in this model\)"):
        RunCheckpointer.find(tmp_path).restore_model(deeper)


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_no_checkpoint_there(tmp_path, make):
    with pytest.raises(ConfigError, match="no such checkpoint|no checkpoint here"):
        RunCheckpointer.find(make(tmp_path))


@pytest.mark.parametrize("given", ["renders", "renders/20"])
def test_a_dir_of_renderings_is_no_checkpoint(tmp_path, given):
    """A run's ``renders/<step>/`` was read as a checkpoints dir, and its renderings as a
    damaged checkpoint ("a damaged checkpoint? ... it is the only one")."""
    (tmp_path / "renders" / "20").mkdir(parents=True)
    (tmp_path / "renders" / "20" / "final.png").write_bytes(b"png")
    expected = rf"^{re.escape(str(tmp_path / given))}: no checkpoint here \(expected a run dir, its checkpoints/"
    with pytest.raises(ConfigError, match=expected):
        RunCheckpointer.find(tmp_path / given)


def test_an_optimizer_of_another_kind_is_named_in_the_error(tmp_path):
    """It said "different model structure" of the optimizer's state."""
    import optax

    _, model, optimizer, _ = trained_state(steps=0)
    RunCheckpointer(tmp_path).save(
        1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
    )
    other = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    with pytest.raises(ConfigError, match="different optimizer state, from another trainer.optimizer: "):
        RunCheckpointer.find(tmp_path).restore(model, other, None)


def test_a_path_with_a_backslash_is_refused(tmp_path):
    """Orbax's TensorStore reads ``\\`` as ``/``: the arrays went to a stray tree beside the
    checkpoint, which then held no weights, and nothing said so."""
    with pytest.raises(ConfigError, match=r"Orbax cannot keep checkpoints under a path with a backslash"):
        RunCheckpointer(tmp_path / "run_name=a\\:b" / "checkpoints")
    assert not (tmp_path / "run_name=a\\:b").exists()


def test_a_checkpointer_opened_on_a_run_dir_points_to_find(tmp_path):
    """It said "no checkpoint of step None (there are none)"."""
    _, model, optimizer, _ = trained_state(steps=0)
    RunCheckpointer(tmp_path / "checkpoints").save(
        1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
    )
    with pytest.raises(ConfigError, match=r"a run dir; its checkpoints: RunCheckpointer\.find\("):
        RunCheckpointer(tmp_path, create=False).restore_model(model)
    RunCheckpointer.find(tmp_path).restore_model(model)


DAMAGES = {  # what a full disk, a copy that broke off or a bad sector leaves in checkpoint 2
    "an array cut short": lambda step: next((step / "model").glob("update.out.kernel/0*")).write_bytes(b""),
    "an item deleted": lambda step: shutil.rmtree(step / "optimizer"),
    "the metadata cut short": lambda step: (step / "meta" / "metadata").write_text("{"),
    "every item deleted": lambda step: [shutil.rmtree(step / item) for item in ("model", "optimizer", "rng", "meta")],
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_is_one_line_naming_it_and_the_one_before(tmp_path, damage):
    """Orbax and TensorStore raised a traceback of some 150 lines at every resume or grow of it."""
    _, model, optimizer, _ = trained_state(steps=0)
    checkpointer = RunCheckpointer(tmp_path / "checkpoints")
    for step in (1, 2):
        checkpointer.save(
            step, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
        )
    DAMAGES[damage](tmp_path / "checkpoints" / "2")
    found = RunCheckpointer.find(tmp_path)
    where = re.escape(str(tmp_path / "checkpoints"))
    expected = (
        rf"^{where}/2: a damaged checkpoint\? It cannot be read \(.+\); "
        rf"move it out of {where} to use the newest other one \(step 1\)$"
    )
    with pytest.raises(ConfigError, match=expected) as caught:
        found.restore(model, optimizer, None)
    assert "\n" not in str(caught.value) and "tensorstore_spec" not in str(caught.value)
    (tmp_path / "checkpoints" / "2").rename(tmp_path / "damaged")  # as the line says: the one before is read
    assert RunCheckpointer.find(tmp_path).restore(model, optimizer, None)[0] == 1


def test_a_damaged_checkpoint_leaves_no_reports_of_orbaxs_abandoned_reads(tmp_path, monkeypatch):
    """In a notebook, under the one line, Python printed pages of "Exception ignored in
    <coroutine _read_array_index_and_device_put>" with TensorStore's specs: the reads Orbax
    abandoned failing again as they were collected. The commands dropped them; a library call
    did not."""
    _, model, optimizer, _ = trained_state(steps=0)
    RunCheckpointer(tmp_path / "checkpoints").save(
        1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
    )
    for chunk in (tmp_path / "checkpoints" / "1").glob("*/*/0*"):  # every read fails: some are abandoned
        chunk.unlink()
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)  # as a notebook's: Python's own
    with pytest.raises(ConfigError, match="a damaged checkpoint"):
        RunCheckpointer.find(tmp_path).restore(model, optimizer, None)
    gc.collect()  # Orbax's reads it abandoned mid-way (how many, if any, is a race) fail as they go

    async def _read_array_index_and_device_put():  # and one more by the name of Orbax's coroutine, for sure
        pass

    coroutine = _read_array_index_and_device_put()
    sys.unraisablehook(SimpleNamespace(exc_type=Exception, exc_value=Exception(), exc_traceback=None, object=coroutine))
    coroutine.close()
    assert reported == []


def test_a_damaged_saved_loss_names_its_checkpoint(tmp_path):
    """Orbax reads every checkpoint's loss when it opens the dir: an old one's stopped the newest's use."""
    _, model, optimizer, _ = trained_state(steps=0)
    checkpointer = RunCheckpointer(tmp_path / "checkpoints")
    for step in (1, 2):
        checkpointer.save(
            step, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
        )
    (tmp_path / "checkpoints" / "1" / "metrics" / "metrics").write_text("")
    with pytest.raises(
        ConfigError,
        match=rf"^{tmp_path}/checkpoints/1: a damaged checkpoint\? .+; move it out of {tmp_path}/checkpoints to use "
        r"the newest other one \(step 2\)$",
    ):
        RunCheckpointer.find(tmp_path)


def _wrapped(cause: Exception) -> Exception:
    """``cause`` as Orbax raises a read's error: a bare ``Exception`` from it, saying nothing of it."""
    try:
        raise Exception("Encountered error while reading array index") from cause
    except Exception as err:  # noqa: BLE001
        return err


@pytest.mark.parametrize(
    "error",
    [
        ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB"),
        _wrapped(ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB")),  # as Orbax wraps a read's
        TypeError("unexpected keyword 'may_alias'"),
    ],
    ids=["out_of_memory", "out_of_memory_in_a_read", "a_bug"],
)
def test_a_restore_that_fails_otherwise_is_not_called_a_damaged_checkpoint(tmp_path, monkeypatch, error):
    """Any failure in a restore was "a damaged checkpoint? ... move it out": a device too small
    for it, or a version mismatch, advised moving a good checkpoint aside."""
    _, model, optimizer, _ = trained_state(steps=0)
    RunCheckpointer(tmp_path).save(
        1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
    )
    found = RunCheckpointer.find(tmp_path)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(found.manager, "restore", failing)
    with pytest.raises(type(error)) as caught:
        found.restore_model(model)
    assert caught.value is error


@pytest.mark.parametrize("where", [".", "checkpoints"])
@pytest.mark.parametrize("damage", ["the metadata cut short", "every item deleted"])
def test_a_damaged_only_checkpoint_says_there_is_none_before_it(tmp_path, damage, where):
    """With every item gone (a delete cut short), find said "no checkpoint here"."""
    _, model, optimizer, _ = trained_state(steps=0)
    RunCheckpointer(tmp_path / where).save(
        1, model=model, optimizer=optimizer, pool=None, key=jax.random.key(0), metadata={"loss": 1.0}
    )
    DAMAGES[damage](tmp_path / where / "1")
    with pytest.raises(ConfigError, match=r"it is the only one in .+: without it there is none to read$"):
        RunCheckpointer.find(tmp_path).metadata()
