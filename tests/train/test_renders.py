"""Every rendering is kept in ``renders/<step>/``, and a resumed run hands its logger those of
its own trajectory: not the ones it makes again, nor those of an attempt that died."""

import shutil

from nca_lab.config import compose
from nca_lab.log.base import Logger
from nca_lab.train.run import run
from nca_lab.train.trainer import kept_renders

from nca_testing import TINY


class RecordingLogger(Logger):
    """Records what a resumed run replays and what it logs afresh."""

    calls: list = []

    def __init__(self, **unused):
        pass

    def resume(self, earlier, renders):
        RecordingLogger.calls.append(("resume", sorted(renders)))

    def log_media(self, paths, step):
        RecordingLogger.calls.append(("media", step))


SETTINGS = [*TINY, "trainer.steps=4", "trainer.render_every=1", "trainer.checkpoint_every=2"]


def train(run_dir):
    RecordingLogger.calls = []
    run(compose(*SETTINGS, "logger._target_=test_renders.RecordingLogger"), run_dir)
    return RecordingLogger.calls


def test_a_resumed_run_replays_its_own_renderings_once(tmp_path):
    assert train(tmp_path) == [("media", 1), ("media", 2), ("media", 3), ("media", 4)]
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["1", "2", "3", "4"]

    (tmp_path / "summary.json").unlink()  # stopped in its final evaluation: that and its rendering are made again
    assert train(tmp_path) == [("resume", [1, 2, 3]), ("media", 4)]  # step 4 was logged twice

    (tmp_path / "summary.json").unlink()
    shutil.rmtree(tmp_path / "checkpoints" / "4")  # died after step 4, before its checkpoint
    shutil.copytree(tmp_path / "renders" / "4", tmp_path / "renders" / "6")  # as from another render_every
    assert train(tmp_path) == [("resume", [1, 2]), ("media", 3), ("media", 4)]
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["1", "2", "3", "4"]  # 6: not this run's


def test_the_pictures_beside_the_renderings_are_the_latest_kept_ones(tmp_path):
    """``rollout.gif`` and ``final.png`` showed a dropped attempt's rendering until the resumed
    run rendered again (at its next ``render_every``), or for good if it stopped before that."""
    for step in (1, 2):
        (tmp_path / "renders" / str(step)).mkdir(parents=True)
        for name in ("rollout.gif", "final.png"):
            (tmp_path / "renders" / str(step) / name).write_text(f"{name} of step {step}")
            shutil.copyfile(tmp_path / "renders" / str(step) / name, tmp_path / name)
    assert sorted(kept_renders(tmp_path, until=2)) == [1, 2]  # nothing dropped: as they were
    assert (tmp_path / "final.png").read_text() == "final.png of step 2"
    assert sorted(kept_renders(tmp_path, until=1)) == [1]
    assert [(tmp_path / name).read_text() for name in ("rollout.gif", "final.png")] == [
        "rollout.gif of step 1",
        "final.png of step 1",
    ]
    assert kept_renders(tmp_path, until=0) == {}
    assert not (tmp_path / "rollout.gif").exists() and not (tmp_path / "final.png").exists()
