"""``python -m nca_lab [overrides]``: train an NCA as the Hydra config says.

Kept short (the Flax examples' ``main.py``): set JAX's environment before JAX loads, then
hand the composed config to :func:`nca_lab.train.run.run`.
"""

import sys
from pathlib import Path

from nca_lab.runtime import configure_jax_environment

configure_jax_environment()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nca_lab.config import config_dir  # noqa: E402
from nca_lab.errors import ConfigError  # noqa: E402


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


if __name__ == "__main__":
    main()
