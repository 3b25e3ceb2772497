"""``python -m nca_lab [overrides]``: train an NCA as the Hydra config says.

Sets JAX's environment before JAX loads and hands the composed config to
:func:`nca_lab.train.run.run` (the Flax examples' ``main.py``); the rest of this module turns
what can go wrong around a job (Hydra's errors, a failed job of a sweep, signals, a process of
a distributed run) into one line and an exit status:

* 2: a mistake on the command line, as one ``error:`` line: nca_lab's own checks and Hydra's
  (an unknown or unparsable override, a missing option, a run dir that cannot be made), or an
  input it cannot use (a damaged checkpoint, a run dir another command is training in).
* 1: a run that failed: training diverged, ran out of memory, or a file could not be read or
  written while it ran (one ``error:`` line), or a job of a sweep failed.
* 143: stopped by SIGTERM or SIGINT: during training after saving a checkpoint; before the
  first step or in the final evaluation at once, with nothing to save (a sweep stops there too).

A process of a run trained by several (``distributed.enabled=true``) whose computation fails,
as one does when another process dies mid-step, prints one ``error:`` line and exits 1 at once;
so does one that fails alone, with its ``error:`` line (a file it cannot write) or traceback (a
bug). JAX's exit handler would wait for the others: for a lost one until its heartbeat times out
(``distributed.heartbeat_timeout_seconds``), for a live one while it waits in a collective for
this one. Failures that every process meets together (settings, a stop signal) exit as usual.

In a sweep (``-m``) a job that fails prints its ``error:`` line and the sweep goes on with
the other jobs; the command then exits 1 with one line naming the first failed job (and how many
failed, where the jobs ran in this process: Hydra's basic launcher). (Not where
the job failed alone in a distributed run: its next job could not run without the others.)
"""

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

from nca_lab.runtime import (
    STOPPED,
    configure_jax_environment,
    quiet_checkpoint_io_callbacks,
    route_checkpoint_reports,
    stop_on_signals,
)

#: What a signal before the first training step or in the final evaluation prints; the training
#: steps install their own handler, which finishes the step and saves first, and restore this one.
STOPPED_OUTSIDE_TRAINING = "stopped: by a signal outside the training steps (nothing to save)"

if __name__ == "__main__":
    stop_on_signals(STOPPED_OUTSIDE_TRAINING)  # before the imports below, which take seconds

configure_jax_environment()
quiet_checkpoint_io_callbacks()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import ConfigCompositionException, OverrideParseException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from nca_lab.config import (  # noqa: E402
    JOB_DIR_RESOLVER,
    composition_error,
    config_dir,
    job_dir_name,
    quote_non_ascii,
    set_by_experiment,
)
from nca_lab.errors import ConfigError, one_line  # noqa: E402
from nca_lab.run_files import RESOLVED_CONFIG  # noqa: E402
from nca_lab.sweep_dir import remove_if_unused  # noqa: E402
from nca_lab.sweep_dir import remove_unused as remove_unused_sweep_dir  # noqa: E402
from nca_lab.train.run_dir_lock import LOCK_FILE  # noqa: E402

# Registered before Hydra composes; launchers that run jobs elsewhere (submitit) take it along
# with Hydra's state, which holds OmegaConf's resolvers.
OmegaConf.register_new_resolver(JOB_DIR_RESOLVER, job_dir_name, replace=True)

#: The user's ``HYDRA_FULL_ERROR``, for the jobs: :func:`cli` sets Hydra's own to 1, so that
#: Hydra raises its errors; with the user's at 1, nca_lab's errors keep their traceback too.
USER_FULL_ERROR = "NCA_LAB_FULL_ERROR"


class JobFailed(Exception):
    """A job of a sweep failed (its ``error:`` line is printed); raised, not exited, so that
    Hydra's launcher goes on with the other jobs and reports the failure at the end."""


#: How many jobs this process ran and how many failed: the count for a sweep's last line where
#: the jobs run in this process (Hydra's basic launcher; submitit's run in others), and whether
#: an error came before any job (Hydra's own: a flag, its log file, a launcher).
_jobs_here = {"ran": 0, "failed": 0}


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Train one job (Hydra calls this once per job of a multirun)."""
    _jobs_here["ran"] += 1  # first: an error from here on is the job's, not Hydra's
    configure_jax_environment()  # again, with hydra.job.env_set applied (NCA_LAB_CACHE_DIR), before JAX loads
    import jax

    from nca_lab.train.multihost import failed_computation
    from nca_lab.train.run import run
    from nca_lab.train.trainer import OutOfMemory, Preempted, TrainingDiverged

    job_log = _checkpoint_reports_to_the_log_file()
    hydra_cfg = HydraConfig.get()
    # Paths in settings (task.target=dot.png, trainer.init_from) are the command line's, relative
    # to where it was typed; nca_lab writes into the run dir by path. hydra.job.chdir=true made
    # them relative to the run dir: "image not found". Hydra changes back after the job.
    os.chdir(hydra_cfg.runtime.cwd)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    log_name = job_log.name if job_log else f"{hydra_cfg.job.name}.log"  # Hydra's, in the run dir (or none)
    made_now = not sweep and _made_by_hydra_now(hydra_cfg, log_name)
    choices = {group: choice for group, choice in hydra_cfg.runtime.choices.items() if not group.startswith("hydra/")}
    try:
        _check_own_dir(Path(hydra_cfg.runtime.output_dir), Path(hydra_cfg.runtime.cwd), log_name)
        summary = run(
            cfg,
            hydra_cfg.runtime.output_dir,
            sweep_dir=hydra_cfg.sweep.dir if sweep else None,
            hydra_records=hydra_records(cfg, hydra_cfg),
            choices=choices,
        )
    except Preempted as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(STOPPED)
    except (ConfigError, TrainingDiverged, OSError, OutOfMemory) as err:
        if made_now and isinstance(err, ConfigError):
            _remove_unused(Path(hydra_cfg.runtime.output_dir), log_name)
        if os.environ.get(USER_FULL_ERROR) == "1" and jax.process_count() == 1:
            raise  # with its traceback: where a new module's constructor failed, say
        where = f"{hydra_cfg.runtime.output_dir}: " if sweep else ""
        reason = one_line(err) if isinstance(err, OSError) else set_by_experiment(str(err), choices)
        message = f"{where}{reason}"
        print(f"error: {message}", file=sys.stderr)
        if sweep and job_log:  # the job's dir says why it has no results, once the sweep's output has scrolled away
            with contextlib.suppress(OSError), open(job_log, "a") as log:
                log.write(f"error: {message}\n")
        if isinstance(err, OSError | OutOfMemory) and jax.process_count() > 1:
            os._exit(1)  # maybe this process's alone: the others wait for it in a collective (a sweep too)
        if sweep:
            _jobs_here["failed"] += 1
            raise JobFailed(message) from err
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    except Exception as err:
        _jobs_here["failed"] += sweep  # a bug's traceback: a failed job too
        if jax.process_count() == 1:
            raise
        if failed_computation(err):
            print(
                f"error: this process's computation failed, as when another process of the run is lost "
                f"({one_line(err)}); its last checkpoint resumes the run",
                file=sys.stderr,
                flush=True,
            )
        else:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(1)  # not sys.exit: JAX's exit handler would wait for the others, which exit too
    print("done: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if k != "step"))


def _checkpoint_reports_to_the_log_file() -> Path | None:
    """Orbax's reports go to the job's log file (:func:`~nca_lab.runtime.route_checkpoint_reports`),
    nowhere if the job logs to no file (``hydra/job_logging=disabled`` or ``stdout``, which have
    no file handler for a config to name). Returns the log file."""
    files = [handler for handler in logging.getLogger().handlers if isinstance(handler, logging.FileHandler)]
    route_checkpoint_reports(files)
    return Path(files[0].baseFilename) if files else None


def _check_own_dir(run_dir: Path, launch_dir: Path, log_name: str) -> None:
    """Refuse a run dir that is the dir the command was started in, or holds it, unless it holds
    a run (``cd <run>; python -m nca_lab hydra.run.dir=.`` resumes it): an empty
    ``hydra.run.dir=`` (a shell variable unset) trained into a checkout's top, among its files."""
    holds_a_run = (run_dir / RESOLVED_CONFIG).is_file()
    if launch_dir.resolve().is_relative_to(run_dir.resolve()) and not holds_a_run:
        log = run_dir / log_name
        with contextlib.suppress(OSError):  # Hydra's, empty: made for this command
            if log.stat().st_size == 0:
                log.unlink()
        where = f"the run dir {run_dir} holds the current directory"
        raise ConfigError(f"{where} (an empty hydra.run.dir?): give the run a dir of its own")


def _made_by_hydra_now(hydra_cfg: DictConfig, log_name: str) -> bool:
    """Whether the run dir is Hydra's timestamped default, holding only the log Hydra made for
    this command (not a dir the user named with ``hydra.run.dir``, which may have been theirs)."""
    named = any(override.startswith("hydra.run.dir=") for override in hydra_cfg.overrides.hydra)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    return not named and {path.name for path in run_dir.iterdir()} <= {log_name}


def _remove_unused(run_dir: Path, log_name: str) -> None:
    """Delete the run dir Hydra made for a command that was refused (its log empty), and its
    day's dir if that is left empty, so that mistyped commands leave no trail of empty
    timestamped dirs under ``outputs/``."""
    log = run_dir / log_name  # Hydra's; with the run dir lock, all there is before nca_lab writes
    remove_if_unused(
        run_dir, lambda names: names <= {log_name, LOCK_FILE} and (log_name not in names or log.stat().st_size == 0)
    )


def hydra_records(cfg: DictConfig, hydra_cfg: DictConfig) -> dict[str, str]:
    """What Hydra writes into a run dir's ``.hydra/`` (``hydra.output_subdir`` is null in
    ``conf/config.yaml``), for :func:`~nca_lab.train.run.run` to write once the job trains:
    Hydra wrote them before the job ran, so a command refused on a finished run rewrote its
    records (``.hydra/config.yaml`` said ``seed: 1`` of a run trained with seed 0)."""
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
        # as typed: iterating resolved each one (trainer.steps=${x} saved as trainer.steps=20, or failed)
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.to_container(hydra_cfg.overrides.task)),
    }


#: Errors of composing the config or of making the run dir: the user's input, not a bug.
USER_ERRORS = (ConfigCompositionException, OverrideParseException, OmegaConfBaseException, OSError)
#: What Hydra writes before it re-raises a failed job's exception (``JobReturn.return_value``).
HYDRA_JOB_FAILED = "Error executing job with overrides:"


class _WithoutHydraJobLine:
    """``sys.stderr`` without Hydra's :data:`HYDRA_JOB_FAILED` line: the job's ``error:`` line
    has said what failed, and the command ends with one line naming the job."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return len(text) if text.startswith(HYDRA_JOB_FAILED) else self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _raised_by_a_job(err: BaseException) -> bool:
    """Whether Hydra re-raised a job's exception from its result (``JobReturn.return_value``): a
    job that ran in another process (submitit), which :data:`_jobs_here` does not count."""
    return any(
        frame.f_code.co_name == "return_value"
        and Path(frame.f_code.co_filename).parts[-3:] == ("hydra", "core", "utils.py")
        for frame, _ in traceback.walk_tb(err.__traceback__)
    )


def cli() -> None:
    """The command: :func:`main`, with Hydra's errors reported as one line.

    Hydra prints its own errors over several lines; with ``HYDRA_FULL_ERROR=1`` it raises
    them instead, which is how they reach this handler. A user who set that variable keeps
    Hydra's full report, and the traceback of nca_lab's errors (:data:`USER_FULL_ERROR`).
    """
    logging.raiseExceptions = False  # a log file on a full disk is not a page of "Logging error"
    full_report = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ[USER_FULL_ERROR] = "1" if full_report else "0"  # in the environment: submitit's jobs read it too
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv[1:] = map(quote_non_ascii, sys.argv[1:])
    stop_on_signals(STOPPED_OUTSIDE_TRAINING)
    try:
        with contextlib.redirect_stderr(sys.stderr if full_report else _WithoutHydraJobLine(sys.stderr)):
            main()
    except BrokenPipeError:  # the output piped into a command that has read enough (--help | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flushes no more into it
        sys.exit(1)
    except JobFailed as failed:  # Hydra re-raises the first failed job's (from its process, for submitit)
        if full_report:
            raise
        ran, failed_here = _jobs_here["ran"], _jobs_here["failed"]
        how_many = (
            f"{failed_here} of the sweep's {ran} jobs failed; the first:"
            if failed_here  # counted where the jobs ran in this process
            else "every job of the sweep ran; the first that failed:"
        )
        print(f"error: {how_many} {failed}", file=sys.stderr)
        sys.exit(1)
    except USER_ERRORS as err:
        if not _jobs_here["ran"]:
            remove_unused_sweep_dir()
        if full_report:
            raise
        # before a job, Hydra writes the run or sweep dir, its multirun.yaml, its log file; a config
        # it cannot find is an IOError too (MissingConfigException), naming no file
        written = isinstance(err, OSError) and err.filename is not None
        reason = f"cannot write {one_line(err)}" if written else composition_error(err, sys.argv[1:])
        print(f"error: {reason}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        by_a_job = _jobs_here["ran"] or _raised_by_a_job(err)
        if not by_a_job:
            remove_unused_sweep_dir()
        if full_report:
            raise
        if type(err).__name__ == "UncompletedJobError":  # submitit's: a job's process died (killed, out of memory)
            print(f"error: a job of the sweep ended without a result ({one_line(err)}); ", end="", file=sys.stderr)
            print("running the sweep again resumes it", file=sys.stderr)
            sys.exit(1)
        if by_a_job:
            raise  # a job's: a bug, with its traceback
        # Hydra's, before any job: a flag it refuses (-m with --cfg), `experiment=null`, a search
        # path or launcher it cannot use, a log file it cannot open (a read-only run dir).
        nulled = [arg for arg in sys.argv[1:] if arg.endswith("=null") and (config_dir() / arg[:-5]).is_dir()]
        hint = f" (to leave out the {nulled[0][:-5]} group: ~{nulled[0][:-5]})" if nulled else ""
        print(f"error: {one_line(err)}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
