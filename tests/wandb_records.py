"""Read an offline W&B run (``run-<id>.wandb``) back, for tests.

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, 2-byte key, version), then
records of ``crc32c (4) | length (2, LE) | type (1) | data`` in 32 KiB blocks, a protobuf
``Record`` split over FIRST/MIDDLE/LAST chunks when it does not fit a block.
"""

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Yield the protobuf records of a ``.wandb`` file in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # the writer is still at it
            return
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a finished run's file, once its ``exit`` record is there.

    ``run.finish()`` returns when W&B's service has the run's last records, before its writer
    (another process) has flushed them to the file: read at once, a busy machine showed files
    without even their ``run`` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))
        if (found and found[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def read_run(run_dir: Path) -> dict:
    """Config keys, history rows and summary of the one finished offline W&B run under ``run_dir/wandb``."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    out = {"runs": files, "config": {}, "history": [], "summary": {}, "run_id": None, "group": None, "name": None}
    for file in files:
        for record in finished_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["run_id"] = record.run.run_id
                out["group"] = record.run.run_group or None
                out["name"] = record.run.display_name or None
                out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                out["history"].append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
            elif kind == "summary":
                out["summary"].update(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update}
                )
    return out
