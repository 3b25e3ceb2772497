"""Open any model nca_lab can run, telling the formats apart by content, not by file name.

A directory is an nca_lab run (or its checkpoints, or one step of them); a file is JSON in
one of the formats the Growing-NCA authors released: the web demo's webgl8 list of layers
or a TF.js graph-model.
"""

import json
import os
from pathlib import Path

from nca_lab.errors import ConfigError, one_line, require
from nca_lab.interop.tfjs_graph import is_tfjs_graph, read_tfjs_graph
from nca_lab.interop.webgl8 import is_webgl8, read_webgl8
from nca_lab.nca import NCA


def read_model(path: str | os.PathLike) -> NCA:
    """The :class:`NCA` stored at ``path``.

    Args:
        path: an nca_lab run dir, checkpoints dir or step dir; or a webgl8 JSON; or a TF.js
            graph-model JSON.

    Raises:
        ConfigError: one line naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        # Imported here: loading a run pulls in Hydra and the trainer, 0.3 s of every grow or
        # export start that reads a webgl8 or TF.js file and needs neither.
        from nca_lab.train.run import load_model

        return load_model(path)
    require(path.is_file(), f"{path}: no such file or directory")
    document = _read_json(path)
    for is_format, read, name in ((is_webgl8, read_webgl8, "webgl8"), (is_tfjs_graph, read_tfjs_graph, "TF.js graph")):
        if is_format(document):
            try:
                return read(document, str(path))
            except ConfigError:
                raise
            except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
                # what the reader's own checks did not foresee (a "size": "one", a list for an object)
                raise ConfigError(f"{path}: a malformed {name} model ({one_line(err)})") from err
    raise ConfigError(
        f"{path}: neither a webgl8 model (a JSON list of layers with data_b64) nor a TF.js graph-model "
        '(a JSON object with "format": "graph-model" and modelTopology)'
    )


def _read_json(path: Path):
    """The parsed JSON document of ``path``."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a JSON file (not UTF-8 text)") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}; truncated?)") from err
    except (ValueError, RecursionError) as err:  # JSON, but past Python's limits: nesting, an integer's digits
        raise ConfigError(f"{path}: JSON that cannot be read ({one_line(err)})") from err
