"""``python -m nca_lab [overrides]``: train an NCA as the Hydra config says.

Kept short (the Flax examples' ``main.py``): set JAX's environment before JAX loads, then
hand the composed config to :func:`nca_lab.train.run.run`. Every mistake a user can make on
the command line ends as one ``error:`` line and exit status 2: nca_lab's own checks, and
Hydra's (an unknown or unparsable override, a missing option, a run dir that cannot be made).
"""

import os
import sys
from pathlib import Path

from nca_lab.runtime import configure_jax_environment

configure_jax_environment()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import ConfigCompositionException, OverrideParseException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from nca_lab.config import config_dir  # noqa: E402
from nca_lab.errors import ConfigError, one_line  # noqa: E402


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Train one job (Hydra calls this once per job of a multirun)."""
    from nca_lab.train.run import run
    from nca_lab.train.trainer import Preempted, TrainingDiverged

    try:
        hydra_cfg = HydraConfig.get()
        group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
        summary = run(cfg, hydra_cfg.runtime.output_dir, group=group)
    except (ConfigError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Preempted as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(143)
    print("done: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if k != "step"))


#: Errors of composing the config or of making the run dir: the user's input, not a bug.
USER_ERRORS = (ConfigCompositionException, OverrideParseException, OmegaConfBaseException, OSError)


def cli() -> None:
    """The command: :func:`main`, with Hydra's errors reported as one line.

    Hydra prints its own errors over several lines; with ``HYDRA_FULL_ERROR=1`` it raises
    them instead, which is how they reach this handler. A user who set that variable keeps
    Hydra's full report.
    """
    full_report = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except USER_ERRORS as err:
        if full_report:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
