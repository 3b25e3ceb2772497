"""The diffusing (denoising) task: the corruption, PSNR evaluation, config, and the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab import grow as grow_cli
from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.render import to_rgb, to_uint8
from nca_lab.tasks.base import psnr
from nca_lab.tasks.diffusing import DiffusingTask, corrupt
from nca_lab.train import run as run_module
from nca_lab.train.run import build, load_model, load_task

TASK = "diffusing"
LEVELS = ("a25", "a50", "a75", "a100")


@pytest.fixture(scope="module")
def task():
    return DiffusingTask(6, target_size=8, padding=2)


def test_cli_smoke_run(smoke_runs):
    run = smoke_runs(TASK)
    assert [r["step"] for r in run.metrics if "loss" in r] == [1, 2]
    evaluation = [r for r in run.metrics if any(k.startswith("eval/") for k in r)][-1]
    assert {k for k in evaluation if k != "step"} == {f"eval/{p}_{a}" for p in ("psnr", "psnr_input") for a in LEVELS}
    assert run.gif_frames > 1
    assert run.png_size == (5 * 48 + 4 * 2, 2 * 48 + 2)  # target + 4 levels; inputs above outputs


def test_grow_starts_a_denoising_run_from_a_noised_target(smoke_runs, tmp_path, capsys, monkeypatch):
    """``nca_lab.grow`` grew every run from the seed: a denoiser, which never saw one, "grew" nothing."""
    run_dir = smoke_runs(TASK).run_dir
    grow_cli.main([str(run_dir), "--steps", "3", "--seed", "4", "--out", str(tmp_path / "grown")])
    out, err = capsys.readouterr()
    assert f"grew {run_dir} for 3 steps from a sample of its task on 12x12 (seed 4)" in out and err == ""
    grow_key = jax.random.key(4)
    sample_key = jax.random.fold_in(grow_key, grow_cli.TASK_SAMPLE_STREAM)
    growth_keys = jax.random.split(grow_key, 3)  # grow_from's: one per segment (two with --damage), steps' below
    assert not any(np.array_equal(*map(jax.random.key_data, (sample_key, k))) for k in growth_keys)
    start = np.asarray(load_task(run_dir).sample(sample_key, 1).state[0])
    noised = start[..., :4] - np.asarray(load_task(run_dir).target)
    assert np.abs(noised).max() > 0.01  # the start is a noised target, not the seed
    expected, _ = grow_cli.grow_from(load_model(run_dir), start, 3, grow_key, damage=False)
    np.testing.assert_array_equal(np.load(tmp_path / "grown" / "final_state.npy"), expected)

    grow_cli.main([str(run_dir), "--steps", "3", "--start", "seed", "--out", str(tmp_path / "seeded")])
    assert "steps on 12x12 (seed 0)" in capsys.readouterr().out  # from the seed, as before
    with pytest.raises(SystemExit) as exit_info:
        grow_cli.main([str(run_dir), "--size", "16", "--out", str(tmp_path / "sized")])
    assert exit_info.value.code == 2 and not (tmp_path / "sized").exists()
    assert capsys.readouterr().err.startswith("error: --size sets the seed's grid; a sample of the run's task has")

    def target_elsewhere(path):  # a task.target=dot.png, relative to where the run trained
        raise ConfigError(f"image not found: dot.png (relative to {tmp_path})")

    monkeypatch.setattr(run_module, "load_task", target_elsewhere)
    with pytest.raises(SystemExit):
        grow_cli.main([str(run_dir), "--out", str(tmp_path / "moved")])
    assert capsys.readouterr().err == (
        f"error: image not found: dot.png (relative to {tmp_path}) (rebuilding the run's task to start from its "
        "sample: grow from the directory it was trained in, or from the seed with --start seed)\n"
    )
    assert not (tmp_path / "moved").exists()


def test_corruption_at_zero_is_the_identity(task):
    target = task.target
    noise = jax.random.uniform(jax.random.key(0), target.shape)
    np.testing.assert_array_equal(np.asarray(corrupt(target, 0.0, noise)), np.asarray(target))
    np.testing.assert_array_equal(np.asarray(corrupt(target, 1.0, noise)), np.asarray(noise))
    states = np.asarray(task.noisy_states(jax.random.key(1), jnp.array([0.0, 0.0])))
    np.testing.assert_array_equal(states[..., :4], np.broadcast_to(np.asarray(target), (2, *target.shape)))
    assert np.all(states[..., 4:] == 0.0)


def test_each_sample_draws_its_own_level_from_the_range():
    task = DiffusingTask(6, target_size=8, padding=2, noise_range=(0.1, 0.9))
    state = np.asarray(task.sample(jax.random.key(0), 32).state)[..., :4]
    background = np.all(np.asarray(task.target) == 0, axis=-1)  # there the state is a * uniform noise
    levels = 2 * state[:, background].mean(axis=(1, 2))
    assert np.all((levels > 0.05) & (levels < 0.95))
    assert levels.min() < 0.3 and levels.max() > 0.7


def test_samples_mix_target_and_fresh_noise_at_the_drawn_level():
    task = DiffusingTask(6, target_size=8, padding=2, noise_range=(0.25, 0.25))
    batch = task.sample(jax.random.key(0), 3)
    noise = (np.asarray(batch.state)[..., :4] - 0.75 * np.asarray(task.target)) / 0.25
    assert noise.min() >= -1e-5 and noise.max() <= 1.0 + 1e-5 and noise.std() > 0.2  # uniform noise in [0, 1]
    assert len({float(np.asarray(batch.state)[i, 0, 0, 0]) for i in range(3)}) == 3  # fresh noise per sample
    np.testing.assert_array_equal(np.asarray(batch.target[1]), np.asarray(task.target))


def test_normal_noise_is_standard_normal():
    task = DiffusingTask(4, target_size=8, padding=2, noise="normal")
    pure = np.asarray(task.noisy_states(jax.random.key(0), jnp.ones(64)))
    assert abs(pure.mean()) < 0.05 and abs(pure.std() - 1.0) < 0.05


def test_psnr():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(1.0) == pytest.approx(0.0)
    assert psnr(0.0) == float("inf")


def test_evaluation_of_an_identity_nca_matches_the_noisy_input(task, tiny_nca):
    metrics = task.evaluate(tiny_nca(6, None), jax.random.key(0), horizon=3, n=2)
    for level in LEVELS:
        assert metrics[f"psnr_{level}"] == pytest.approx(metrics[f"psnr_input_{level}"], abs=1e-4)
    inputs = [metrics[f"psnr_input_{level}"] for level in LEVELS]
    assert inputs == sorted(inputs, reverse=True)  # more noise, lower PSNR


def test_evaluation_scores_the_states_after_the_horizon(task, drifting_nca):
    """A drift of ``rate`` a step on every pixel: each level's PSNR is that of its noisy inputs
    moved by ``horizon * rate`` and clipped to [0, 1] as shown, not of the inputs."""
    rate, horizon, n, key = 0.05, 3, 2, jax.random.key(0)
    metrics = task.evaluate(drifting_nca(6, rate), key, horizon=horizon, n=n)
    _, noisy = task._levels(jax.random.split(key)[0], n)  # the draw evaluate makes
    rgba = np.asarray(noisy)[..., :4]
    for i, level in enumerate(LEVELS):
        moved = np.clip(rgba[i * n : (i + 1) * n] + horizon * rate, 0.0, 1.0)
        expected = psnr(np.mean(np.square(moved - np.asarray(task.target))))
        assert metrics[f"psnr_{level}"] == pytest.approx(expected, rel=1e-5), level
        assert metrics[f"psnr_{level}"] != pytest.approx(metrics[f"psnr_input_{level}"], rel=1e-3), level


def test_the_final_picture_shows_the_inputs_and_the_states_at_the_horizon(task, drifting_nca):
    """Top row the target and each level's input, bottom row the target and its state after
    ``horizon`` steps (not the GIF's last, twice that)."""
    rate, horizon, key = 0.05, 3, jax.random.key(0)
    final = task.render(drifting_nca(6, rate), key, horizon=horizon).final
    _, noisy = task._levels(jax.random.split(key)[0], 1)  # the draw render makes
    side, gap = 12 * task.render_scale, 2

    def cell(row, column):
        top, left = row * (side + gap), column * (side + gap)
        return final[top : top + side, left : left + side]

    for level in range(len(LEVELS)):
        for row, steps in ((0, 0), (1, horizon)):
            shown = to_uint8(to_rgb(np.asarray(noisy[level]) + steps * rate), task.render_scale)
            np.testing.assert_array_equal(cell(row, 1 + level), shown)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"noise": "salt"}, "task.noise"),
        ({"noise_range": (0.8, 0.2)}, "noise_range"),
        ({"noise_range": (0.0, 1.5)}, "noise_range"),
        ({"noise_range": 0.5}, r"^task\.noise_range must be \[low, high\] with 0 <= low <= high <= 1, got 0\.5$"),
        ({"noise_range": "0,1"}, r"^task\.noise_range must be \[low, high\] .+, got '0,1'$"),
        ({"eval_levels": 0.5}, r"^task\.eval_levels must be a list of noise levels in \(0, 1\], got 0\.5$"),
        ({"eval_levels": (0.0,)}, "eval_levels"),
        ({"eval_levels": ()}, "eval_levels"),
        ({"eval_levels": (0.25, 0.251)}, r"must differ in percent"),  # both psnr_a25: one was lost
        ({"render_scale": 0}, "render_scale"),
        ({"fixed_input": True}, r"^task\.fixed_input needs num_channels of at least 8 \(RGBA out, RGBA in\), got 6$"),
        ({"output_init": "grey"}, r"^task\.output_init=grey needs task\.fixed_input=true: else no cell would see its"),
        ({"output_init": "black"}, r"^task\.output_init must be one of \('input', 'grey'\)"),
    ],
)
def test_bad_settings_are_config_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        DiffusingTask(6, target_size=8, padding=2, **option)


def test_fixed_input_keeps_the_noised_rgba_in_the_last_channels():
    """ViTCA's input channels: the cells start from the noised target and keep it in channels 4-7
    of 8 (the model holds them: ``NCA(fixed_channels=task.fixed_channels)``)."""
    kept = DiffusingTask(8, target_size=8, padding=2, fixed_input=True)
    plain = DiffusingTask(8, target_size=8, padding=2)
    assert (kept.fixed_channels, plain.fixed_channels) == (4, 0)
    key = jax.random.key(2)
    states, plain_states = (np.asarray(t.sample(key, 3).state) for t in (kept, plain))
    np.testing.assert_array_equal(states[..., :4], plain_states[..., :4])
    np.testing.assert_array_equal(states[..., 4:], states[..., :4])
    assert np.all(plain_states[..., 4:] == 0.0) and np.any(states[..., 4:] != 0.0)


def test_a_grey_start_is_scored_and_shown_against_the_kept_input(tiny_nca):
    """ViTCA's constant start: the RGBA starts at 0.5, the noised target is only in the kept
    channels; the do-nothing baseline and the pictures' input row are still the noised target."""
    kept = DiffusingTask(8, target_size=8, padding=2, fixed_input=True)
    grey = DiffusingTask(8, target_size=8, padding=2, fixed_input=True, output_init="grey")
    key = jax.random.key(3)
    states, grey_states = (np.asarray(t.sample(key, 2).state) for t in (kept, grey))
    assert np.all(grey_states[..., :3] == 0.5) and np.all(grey_states[..., 3] == 1.0)  # opaque mid-grey
    np.testing.assert_array_equal(grey_states[..., 4:], states[..., 4:])
    model = tiny_nca(8, None)  # the identity
    model.fixed_channels = 4
    metrics, grey_metrics = (t.evaluate(model, key, horizon=2, n=2) for t in (kept, grey))
    for level in LEVELS:
        assert grey_metrics[f"psnr_input_{level}"] == metrics[f"psnr_input_{level}"]
        assert grey_metrics[f"psnr_{level}"] != pytest.approx(metrics[f"psnr_{level}"], rel=1e-3)
    pictures = [t.render(model, key, horizon=2).final for t in (kept, grey)]
    top = 12 * kept.render_scale
    np.testing.assert_array_equal(pictures[1][:top], pictures[0][:top])  # target and inputs
    assert not np.array_equal(pictures[1][top:], pictures[0][top:])  # grey outputs


def test_levels_and_ranges_may_be_arrays():
    """From Python: ``jnp.linspace`` levels were floats to ``float()``, and must stay so."""
    task = DiffusingTask(6, target_size=8, padding=2, noise_range=np.array([0.1, 0.9]), eval_levels=jnp.array([0.5, 1]))
    assert task.level_names == ["a50", "a100"]
    with pytest.raises(ConfigError, match=r"^task\.eval_levels must be a list of noise levels in \(0, 1\], got "):
        DiffusingTask(6, target_size=8, padding=2, eval_levels=np.array(0.5))  # 0-d: not a list


def test_levels_are_named_in_percent_rounded_half_up():
    assert DiffusingTask(6, target_size=8, padding=2, eval_levels=(0.125, 0.145, 0.285, 1.0)).level_names == [
        "a13",
        "a15",
        "a29",
        "a100",
    ]


def test_quick_preset_builds_without_alive_masking():
    task, model, _ = build(compose("experiment=quick_diffusing"))
    assert isinstance(task, DiffusingTask)
    assert task.alive_threshold is None and model.alive_threshold is None
    assert task.pool_size == 0
