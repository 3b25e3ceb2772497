"""Which settings say what a run is (resuming under others is refused) and which may change."""

from omegaconf import OmegaConf

from nca_lab.config import compose
from nca_lab.train.run_settings import setting_changes


def config_of(*overrides):
    return OmegaConf.to_container(compose("task=mnist_inpainting", *overrides), resolve=True)


def test_where_data_is_and_how_results_are_shown_may_change_on_resume():
    saved = config_of()
    changed = config_of("task.data_root=elsewhere", "task.download=true", "task.eval_samples=1", "task.render_scale=2")
    assert setting_changes(saved, changed) == ""


def test_what_the_run_learns_may_not():
    saved = config_of()
    changed = config_of("seed=1", "task.mask_ratio=0.25", "perceive.angle=0.5", "update.fire_rate=0.25")
    assert setting_changes(saved, changed) == (
        "perceive.angle: 0.0 -> 0.5; seed: 0 -> 1; task.mask_ratio: 0.5 -> 0.25 and 1 more"
    )


def test_a_run_saved_before_an_option_existed_trained_without_it():
    """``task.fixed_input`` and ``output_init`` came later: a run saved before them is resumed or
    skipped only without them."""
    saved = config_of()
    del saved["task"]["fixed_input"], saved["task"]["output_init"]
    assert setting_changes(saved, config_of("task.fixed_input=true")) == "task.fixed_input: False -> True"
    assert setting_changes(saved, config_of("task.fixed_input=true", "task.output_init=grey")) == (
        "task.fixed_input: False -> True; task.output_init: 'input' -> 'grey'"
    )
    assert setting_changes(saved, config_of()) == ""
    added_elsewhere = config_of()
    del added_elsewhere["num_channels"]  # one that came later without a value for older runs: not compared
    assert setting_changes(added_elsewhere, config_of("num_channels=24")) == ""
    growing = OmegaConf.to_container(compose("task=growing"), resolve=True)
    assert "fixed_input" not in growing["task"] and setting_changes(growing, growing) == ""


def test_a_task_class_says_which_of_its_options_are_free_and_which_came_later(tmp_path, monkeypatch):
    """A new task's display option was refused on resume, and one added to it later compared as
    a change, unless nca_lab's own lists were edited: the task class declares them (its base
    classes' count too: ``render_scale``)."""
    (tmp_path / "texture_task.py").write_text(
        "from nca_lab.tasks.growing import GrowingTask\n\n\n"
        "class TextureTask(GrowingTask):\n"
        "    free_on_resume = ('render_samples',)\n"
        "    added_later = {'period': 8}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def config(**task):
        return {"seed": 0, "task": {"_target_": "texture_task.TextureTask", "period": 8, "render_samples": 4, **task}}

    assert setting_changes(config(), config(render_samples=2, render_scale=3)) == ""
    older = config()
    del older["task"]["period"]
    assert setting_changes(older, config()) == ""
    assert setting_changes(older, config(period=4)) == "task.period: 8 -> 4"
    assert setting_changes(config(), config(render_samples=2, period=4)) == "task.period: 8 -> 4"
