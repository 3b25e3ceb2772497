"""Test helpers shared by every test file: tiny overrides, the real CLI,
and the comparison of a fast rollout path with its reference."""

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nca_lab.data.mnist import IDX_TYPES

REPO = Path(__file__).resolve().parent.parent

#: Overrides that make any growing-style run tiny: a 12x12 grid, 2 steps of 2-3 CA steps.
TINY = [
    "logger=none",
    "task.target_size=8",
    "task.padding=2",
    "trainer.steps=2",
    "trainer.batch_size=2",
    "trainer.rollout_steps=[2,3]",
    "trainer.progress=false",
]


def tiny_for_task(task: str) -> list[str]:
    """:data:`TINY` without the ``task.*`` settings that ``conf/task/<task>.yaml`` does not have
    (a new task without ``target_size`` still gets the tiny trainer)."""
    from omegaconf import OmegaConf

    from nca_lab.config import config_dir

    options = OmegaConf.load(config_dir() / "task" / f"{task}.yaml").keys()
    return [o for o in TINY if not o.startswith("task.") or o.split("=")[0].removeprefix("task.") in options]


def run_cli(*args: str, module: str = "nca_lab", cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
    """Run ``python -m <module> <args>`` as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_for_signal_handler(pid: int, timeout: float = 60.0) -> None:
    """Wait until process ``pid`` catches SIGTERM (the command's :func:`stop_on_signals`, which
    Python's own start-up never installs); at once where ``/proc`` is missing."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + timeout
    while status.exists() and time.monotonic() < deadline:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # exited: the caller sees its status
            return
        if fields["State"].split()[0] == "Z" or int(fields["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)):
            return  # a zombie has exited too
        time.sleep(0.001)
    if status.exists():
        raise AssertionError(f"process {pid} installed no SIGTERM handler in {timeout} s")


def interrupted(*args: str, module: str = "nca_lab", after: float, env: dict | None = None) -> tuple[int, str]:
    """Run ``python -m <module> <args>`` (``env`` added to the environment), send it SIGINT
    ``after`` seconds after it installed its signal handlers; return its exit status and stderr.

    Not ``after`` seconds from the start: on a busy core (four other processes running) Python's
    start-up alone took 0.3 s, and a SIGINT before the handlers is Python's KeyboardInterrupt
    traceback (exit -2).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_signal_handler(process.pid)
    except BaseException:
        process.kill()
        process.wait()
        raise
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, err


@nnx.jit(static_argnames=("steps", "remat", "unroll"))
def rollout_value_and_grads(model, state, keys, steps, **rollout_kw):
    """Loss, final state, parameter gradients and initial-state gradient of a rollout."""

    def loss(model, state):
        final, _ = model.rollout(state, keys, steps, **rollout_kw)
        return jnp.mean(jnp.square(final[..., :4] - 0.3)) + 0.1 * jnp.mean(final[..., 4:] ** 2), final

    (value, final), (param_grads, state_grad) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model, state)
    return value, final, nnx.state(param_grads, nnx.Param), state_grad


def assert_close(a, b, *, rtol: float = 1e-5):
    """``a`` equals ``b`` to ``rtol``, with an absolute tolerance a tenth of that times ``b``'s largest entry."""
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0.1 * rtol * float(jnp.max(jnp.abs(b))))


def assert_gradients_agree(got, want, *, rtol: float = 1e-5):
    """Two gradient pytrees agree leaf by leaf (:func:`assert_close`), and every leaf of ``want`` is non-zero."""
    leaves_got, leaves_want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(leaves_got) == len(leaves_want) > 0
    for a, b in zip(leaves_got, leaves_want, strict=True):
        assert float(jnp.max(jnp.abs(b))) > 0  # every parameter gets a gradient
        assert_close(a, b, rtol=rtol)


def assert_rollouts_agree(got, want, *, rtol: float = 1e-5, exact_states: bool = False):
    """Two :func:`rollout_value_and_grads` results agree: the losses to 1e-6, the final states
    (bit for bit with ``exact_states``), and every gradient, each non-zero in ``want``, to
    ``rtol`` (:func:`assert_close`)."""
    (v_got, f_got, g_got, s_got), (v_want, f_want, g_want, s_want) = got, want
    if exact_states:
        np.testing.assert_array_equal(f_got, f_want)
    else:
        assert_close(f_got, f_want, rtol=rtol)
    np.testing.assert_allclose(v_got, v_want, rtol=1e-6)
    assert_gradients_agree(g_got, g_want, rtol=rtol)
    assert_close(s_got, s_want, rtol=rtol)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``: MNIST's format, for
    data the tests make (the package only reads it)."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    assert array.dtype in codes and 0 < array.ndim < 256, (array.dtype, array.shape)
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array, IDX_TYPES[code]).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path
