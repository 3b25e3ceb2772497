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
