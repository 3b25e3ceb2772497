"""Results appear whole or not at all: ``atomic_path`` replaces the file only when writing completes."""

import pytest

from nca_lab.atomic import atomic_path, write_text_atomically


def test_a_completed_write_replaces_the_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing visible until the block completes
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "final.png"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final.png"]


def test_text_is_written_whole_as_utf8(tmp_path):
    path = write_text_atomically(tmp_path / "config_resolved.yaml", "target: 🦎\n")
    assert path.read_bytes() == "target: 🦎\n".encode() and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_the_file_is_synced_to_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """Else a machine crash can leave the new name on an empty file (a summary.json of 0 bytes)."""
    import os

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a))) or replace(a, b))
    write_text_atomically(tmp_path / "summary.json", "{}\n")
    tmp = str(tmp_path / f".summary.json.{os.getpid()}.tmp")
    assert events == [("fsync", tmp), ("replace", tmp)]


def test_a_write_that_fails_without_a_file_name_names_the_file(tmp_path):
    """A full disk: "error: [Errno 28] No space left on device", without saying which file."""
    import errno

    from nca_lab.errors import one_line

    with pytest.raises(OSError) as caught, atomic_path(tmp_path / "config_resolved.yaml"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert one_line(caught.value) == f"{tmp_path / 'config_resolved.yaml'}: No space left on device"
