"""metrics.jsonl: a resumed run continues after the lines of its checkpoint, whatever the dead attempt left."""

import json
from pathlib import Path

import pytest

from nca_lab.errors import ConfigError
from nca_lab.log.metrics_file import MetricsFile, read_metrics


def write_lines(run_dir, records, tail=""):
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def test_a_resumed_run_drops_the_lines_after_its_checkpoint(tmp_path):
    write_lines(tmp_path, [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}, {"step": 3, "loss": 0.3}])
    metrics = MetricsFile(tmp_path, resume_step=2)
    metrics.write(3, {"loss": 0.25})
    metrics.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}, {"step": 3, "loss": 0.25}]


def test_a_line_cut_short_by_a_full_disk_does_not_stop_the_resume(tmp_path):
    write_lines(tmp_path, [{"step": 1, "loss": 0.5}], tail='{"step": 2, "loss": 0.4, "lr": 0.0020')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    metrics = MetricsFile(tmp_path, resume_step=1)
    metrics.write(2, {"loss": 0.4})
    metrics.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]


def test_a_last_line_without_its_newline_is_kept_when_whole(tmp_path):
    write_lines(tmp_path, [{"step": 1, "loss": 0.5}], tail='{"step": 2, "loss": 0.4}')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]


def test_a_resume_that_cannot_rewrite_the_file_keeps_every_line(tmp_path, monkeypatch):
    """The rewrite on resume fails half-way (a full disk, a kill): the history stays whole."""
    records = [{"step": step, "loss": 1 / step} for step in range(1, 51)]
    write_lines(tmp_path, records)
    written = Path.write_text

    def half_then_full(path, text, *args, **kwargs):
        written(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        MetricsFile(tmp_path, resume_step=40)
    monkeypatch.undo()
    assert read_metrics(tmp_path) == records
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left


def test_a_line_damaged_in_the_middle_is_one_line_naming_it(tmp_path):
    """It was a JSONDecodeError's traceback at every resume (a kill only ever cuts the last line)."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "lo\n{"step": 3, "loss": 0.3}\n')
    with pytest.raises(
        ConfigError, match=r"metrics\.jsonl: line 3 is no metrics record \('\{\"step\": 2, \"lo'\): mend or delete it$"
    ):
        read_metrics(tmp_path)
    for no_record in ("[2, 0.4]", '{"step": "2", "loss": 0.4}'):  # JSON, but no record
        (tmp_path / "metrics.jsonl").write_text(f'{{"step": 1, "loss": 0.5}}\n{no_record}\n')
        with pytest.raises(ConfigError, match=r"line 2 is no metrics record"):
            read_metrics(tmp_path)


def test_non_finite_values_are_written_as_null(tmp_path):
    """JSON has no NaN or infinity (a perfect evaluation's PSNR is infinite); ``json.dumps`` alone writes
    ``NaN`` and ``Infinity``, which other readers refuse."""
    metrics = MetricsFile(tmp_path)
    metrics.write(1, {"a": float("nan"), "b": float("inf"), "c": 0.5})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "a": null, "b": null, "c": 0.5}\n'
