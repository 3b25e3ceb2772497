"""The sample pool: drawing without replacement, sorting by loss, reseeding, damage, write-back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab.errors import ConfigError
from nca_lab.tasks.base import Batch, Task
from nca_lab.tasks.damage import damage_circles
from nca_lab.train.pool import Pool, draw, init_pool, prepare, write_back

FRESH = -1.0
FRESH_TARGET = -2.0


class ValueTask(Task):
    """Every cell of a state holds the sample's loss; fresh samples hold ``FRESH``, their
    targets ``FRESH_TARGET``, which the loss ignores."""

    grid_shape = (8, 8)

    def __init__(self):
        super().__init__(num_channels=4, render_scale=1)

    def sample(self, key, n):
        del key
        return Batch(jnp.full((n, 8, 8, 4), FRESH), jnp.full((n, 8, 8, 4), FRESH_TARGET))

    def loss(self, state, target):
        del target
        return jnp.mean(state, axis=(1, 2, 3))

    def damage(self, state, key):
        return damage_circles(state, key, radius=(0.5, 0.8))


@pytest.fixture(scope="module")
def pool():
    """16 states whose (distinct, positive) losses are a shuffled 1..16; sample i's target holds i."""
    values = np.random.default_rng(0).permutation(16).astype(np.float32) + 1.0
    targets = jnp.broadcast_to(jnp.arange(16.0)[:, None, None, None], (16, 8, 8, 4))
    return Pool(jnp.broadcast_to(values[:, None, None, None], (16, 8, 8, 4)), targets)


@pytest.fixture(scope="module")
def draw_and_prepare():
    """``draw`` then ``prepare`` in one jitted function, as the train step runs them."""

    @jax.jit
    def run(pool, key):
        draw_key, prepare_key = jax.random.split(key)
        idx, batch = draw(pool, draw_key, 8)
        new_idx, prepared = prepare(ValueTask(), idx, batch, prepare_key, 3)
        return idx, batch, new_idx, prepared

    return run


def test_init_pool_holds_fresh_samples():
    pool = init_pool(ValueTask(), jax.random.key(0), 5)
    assert pool.state.shape == (5, 8, 8, 4) and pool.target.shape == (5, 8, 8, 4)
    assert np.all(np.asarray(pool.state) == FRESH)


def test_draw_is_without_replacement_and_returns_the_drawn_samples(pool):
    seen = set()
    for i in range(20):
        idx, batch = draw(pool, jax.random.key(i), 8)
        idx = np.asarray(idx)
        assert len(set(idx.tolist())) == 8
        np.testing.assert_array_equal(np.asarray(batch.state), np.asarray(pool.state)[idx])
        seen.update(idx.tolist())
    assert seen == set(range(16))  # every sample gets drawn


def test_prepare_sorts_by_descending_loss_and_reseeds_the_worst(pool, draw_and_prepare):
    idx, batch, new_idx, prepared = draw_and_prepare(pool, jax.random.key(1))
    losses = np.asarray(ValueTask().loss(batch.state, batch.target))
    order = np.argsort(-losses)
    np.testing.assert_array_equal(np.asarray(new_idx), np.asarray(idx)[order])
    state = np.asarray(prepared.state)
    assert np.all(state[0] == FRESH)  # the highest-loss sample became a fresh one
    pool_values = np.asarray(pool.state)[np.asarray(new_idx), 0, 0, 0]
    assert np.all(np.diff(pool_values) < 0)
    np.testing.assert_array_equal(state[1:5], np.asarray(pool.state)[np.asarray(new_idx)[1:5]])
    target = np.asarray(prepared.target)
    assert np.all(target[0] == FRESH_TARGET)  # the fresh sample comes with its own target ...
    np.testing.assert_array_equal(target[1:], np.asarray(pool.target)[np.asarray(new_idx)[1:]])  # ... the rest theirs


def test_damage_changes_only_damaged_cells_of_the_best_samples(pool, draw_and_prepare):
    _, _, new_idx, prepared = draw_and_prepare(pool, jax.random.key(2))
    before = np.asarray(pool.state)[np.asarray(new_idx)[-3:]]
    after = np.asarray(prepared.state)[-3:]
    changed = np.any(after != before, axis=-1)
    assert changed.any(axis=(1, 2)).all()  # every damaged sample lost some cells ...
    assert (~changed).any(axis=(1, 2)).all()  # ... but not all of them
    assert np.all(after[changed] == 0.0)  # a damaged cell loses every channel
    np.testing.assert_array_equal(after[~changed], before[~changed])


def test_damage_circles_only_zeroes_cells_inside_the_discs():
    state = jax.random.uniform(jax.random.key(0), (6, 16, 16, 5), minval=0.5, maxval=1.0)
    damaged = np.asarray(damage_circles(state, jax.random.key(1), radius=(0.2, 0.3), circles=2))
    inside = np.all(damaged == 0.0, axis=-1)
    assert inside.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(damaged[~inside], np.asarray(state)[~inside])


def test_write_back_stores_at_the_indices_only(pool):
    idx = jnp.array([3, 0, 7])
    batch = Batch(jnp.full((3, 8, 8, 4), 99.0), jnp.ones((3, 8, 8, 4)))
    new = write_back(pool, idx, batch)
    state = np.asarray(new.state)
    assert np.all(state[[3, 0, 7]] == 99.0) and np.all(np.asarray(new.target)[[3, 0, 7]] == 1.0)
    others = np.setdiff1d(np.arange(16), [3, 0, 7])
    np.testing.assert_array_equal(state[others], np.asarray(pool.state)[others])


def test_targets_may_be_any_pytree(pool):
    """The trainer takes a task's targets as any pytree (``_check_task_shapes``); the pool
    indexed them as one array: ``TypeError: unhashable type`` at the first step."""

    class TreeTask(ValueTask):
        def sample(self, key, n):
            batch = super().sample(key, n)
            return Batch(batch.state, {"image": batch.target, "label": jnp.full((n,), 7)})

    tree_pool = Pool(pool.state, {"image": pool.target, "label": jnp.arange(16)})
    idx, batch = draw(tree_pool, jax.random.key(0), 8)
    new_idx, prepared = prepare(TreeTask(), idx, batch, jax.random.key(1), 3)
    labels = np.asarray(prepared.target["label"])
    assert labels[0] == 7 and np.all(labels[1:] == np.asarray(new_idx)[1:])
    np.testing.assert_array_equal(np.asarray(prepared.target["image"])[1:, 0, 0, 0], labels[1:])
    written = write_back(tree_pool, new_idx, prepared)
    np.testing.assert_array_equal(np.asarray(written.target["label"])[np.asarray(new_idx)], labels)


def test_damaging_the_whole_batch_is_refused(pool):
    idx, batch = draw(pool, jax.random.key(0), 4)
    with pytest.raises(ConfigError, match="damage_n"):
        prepare(ValueTask(), idx, batch, jax.random.key(1), 4)
