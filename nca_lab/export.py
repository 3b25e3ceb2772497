"""``python -m nca_lab.export CHECKPOINT --format webgl8 --out FILE.json``: a model for the web demo.

Writes the 8-bit format of the Growing-NCA article's WebGL demo (Mordvintsev et al.,
Distill 2020; distillpub/post--growing-ca ``public/ca.js``), quantised exactly as the
authors' ``pack_layer``: per-part scale ``2 * max|v|``, error at most ``scale / 510``.
CHECKPOINT is an nca_lab run dir or checkpoint, or any model file ``nca_lab.grow`` reads
(so a TF.js graph-model converts to webgl8 too). The file is written only once the model
has been checked, under a temporary name first, so a failure leaves nothing behind.
"""

import argparse
import json
import math
import sys
from pathlib import Path

from nca_lab.runtime import (
    STOPPED_BY_SIGNAL,
    configure_jax_environment,
    run_checkpoint_reader,
    stop_on_signals,
)

if __name__ == "__main__":
    stop_on_signals(STOPPED_BY_SIGNAL)  # before the imports below, which take seconds

configure_jax_environment()

from nca_lab.atomic import write_text_atomically  # noqa: E402
from nca_lab.cli_args import ArgumentParser, command_name  # noqa: E402
from nca_lab.errors import ConfigError, one_line, require  # noqa: E402
from nca_lab.interop.detect import read_model  # noqa: E402
from nca_lab.interop.original import FIRE_RATE  # noqa: E402
from nca_lab.interop.webgl8 import to_webgl8  # noqa: E402

#: ``--format`` name -> function turning ``(model, source)`` into a JSON document.
FORMATS = {"webgl8": to_webgl8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = ArgumentParser(
        prog=command_name("nca_lab.export"), description="Export a trained NCA to the Growing-NCA web demo's format."
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="nca_lab run dir or checkpoint, or a model JSON")
    parser.add_argument("--format", choices=sorted(FORMATS), default="webgl8", help="output format (default webgl8)")
    parser.add_argument("--out", required=True, metavar="FILE.json", help="file to write")
    return parser.parse_args(argv)


def export(checkpoint: str | Path, out: str | Path, fmt: str = "webgl8") -> list[str]:
    """Write the model at ``checkpoint`` to ``out`` in format ``fmt``; returns notes for the user.

    A model in memory: ``nca_lab.interop.to_webgl8(model)`` gives the document to write.

    Raises:
        ConfigError: the model cannot be read or does not fit the format.
    """
    require(fmt in FORMATS, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    model = read_model(checkpoint)
    document = FORMATS[fmt](model, str(checkpoint))
    text = json.dumps(document)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # one_line: a parent that is a file is named
        raise ConfigError(f"{out}: cannot create its dir ({one_line(err)})") from err
    try:
        write_text_atomically(out, text)
    except OSError as err:
        raise ConfigError(f"{out}: cannot write ({err.strerror})") from err
    return demo_differences(model)


def demo_differences(model) -> list[str]:
    """What the web demo runs differently from ``model``: settings the format does not store."""
    notes = []
    fire_rate = getattr(model.update, "fire_rate", FIRE_RATE)
    if fire_rate != FIRE_RATE:
        notes.append(f"the web demo updates cells at fire rate {FIRE_RATE}; this model was trained with {fire_rate}")
    angle = getattr(model.perceive, "angle", 0.0)
    if angle:
        notes.append(
            f"this model perceives at angle {angle:g} rad ({math.degrees(angle):.4g} degrees); "
            "the web demo starts at 0: set its rotation to match"
        )
    return notes


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input is one ``error: <file>: ...`` line and exit status 2, nothing written."""
    args = parse_args(argv)
    try:
        notes = export(args.checkpoint, Path(args.out), args.format)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out} ({args.format})")


def cli() -> None:
    """The command: :func:`main`, with SIGTERM and SIGINT one line and exit status 143."""
    run_checkpoint_reader(main)


if __name__ == "__main__":
    cli()
