"""Data parallelism on 4 forced CPU devices gives the losses of 1 device, with either kernel.

Runs in a subprocess: ``--xla_force_host_platform_device_count`` must be set before JAX
starts, and the other tests keep their single device.
"""

import json
import os
import subprocess
import sys

import jax
from flax import nnx

from nca_lab.ckpt import RunCheckpointer
from nca_lab.config import compose
from nca_lab.train.pool import init_pool
from nca_lab.train.run import build

from nca_testing import REPO, TINY

OVERRIDES = [
    *("task=regenerating", "task.pool_size=16", "task.damage_n=1", "trainer.batch_size=4"),
    *("trainer.rollout_steps=[2,4]", "trainer.steps=3", "trainer.log_every=1", "trainer.render_every=0"),
]

SCRIPT = r"""
import json, sys
import jax
from flax import nnx
from nca_lab.config import compose
from nca_testing import TINY
from nca_lab.errors import ConfigError
from nca_lab.log.metrics_file import read_metrics
from nca_lab.train import parallel
from nca_lab.train.pool import init_pool
from nca_lab.train.run import build
from nca_lab.train.step import make_train_step

OVERRIDES = [*TINY, *json.loads(sys.argv[2])]
out = {"devices": jax.device_count()}

def steps(mesh, *extra):
    task, model, trainer = build(compose(*OVERRIDES, *extra))
    optimizer = nnx.Optimizer(model, trainer.optimizer(trainer.learning_rate), wrt=nnx.Param)
    pool = init_pool(task, jax.random.key(0), task.pool_size)
    if mesh is not None:
        pool = parallel.place(pool, mesh)
        parallel.replicate(mesh, model, optimizer)
    step = make_train_step(task, batch_size=4, rollout_steps=(2, 4), mesh=mesh)
    if extra and mesh is not None:  # the fused kernels: each device runs them on its samples
        text = step.lower(model, optimizer, pool, jax.random.key(0)).as_text()
        out["fused_split"] = "sdy.manual_computation" in text
    losses = []
    for i in range(3):
        pool, metrics = step(model, optimizer, pool, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return losses, mesh is not None and pool.state.sharding.is_equivalent_to(parallel.batch_sharding(mesh), 4)

mesh = parallel.data_mesh()
out["single"], _ = steps(None)
out["sharded"], out["pool_stays_split"] = steps(mesh)
out["fused_single"], _ = steps(None, "kernel=pallas")
out["fused_sharded"], _ = steps(mesh, "kernel=pallas")

def fit(run_dir, data_parallel):
    task, model, trainer = build(compose(*OVERRIDES, f"trainer.data_parallel={data_parallel}"))
    trainer.fit(model, task, key=jax.random.key(0), run_dir=run_dir)
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]

out["fit_single"] = fit(sys.argv[1] + "/single", False)
out["fit_parallel"] = fit(sys.argv[1] + "/parallel", True)
try:
    make_train_step(build(compose(*OVERRIDES))[0], batch_size=3, rollout_steps=(2, 2), mesh=mesh)
except ConfigError as exc:
    out["error"] = str(exc)
try:  # the app's build stops before the model (whose initialisation compiles) is made
    build(compose(*OVERRIDES, "trainer.data_parallel=true", "trainer.batch_size=6"))
except ConfigError as exc:
    out["build_error"] = str(exc)
try:  # a pool split unevenly over the devices
    build(compose(*OVERRIDES, "trainer.data_parallel=true", "task.pool_size=18"))
except ConfigError as exc:
    out["pool_error"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def test_four_devices_give_the_losses_of_one(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": " ".join(["--xla_force_host_platform_device_count=4", os.environ.get("XLA_FLAGS", "")]),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(OVERRIDES)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
    assert out["devices"] == 4
    assert out["pool_stays_split"]
    assert len(out["sharded"]) == 3
    for single, sharded in zip(out["single"], out["sharded"], strict=True):
        assert abs(single - sharded) <= 1e-6 * abs(single)
    assert out["fused_split"]
    for single, sharded in zip(out["fused_single"], out["fused_sharded"], strict=True):
        assert abs(single - sharded) <= 1e-6 * abs(single)
    assert len(out["fit_parallel"]) == 3
    for single, sharded in zip(out["fit_single"], out["fit_parallel"], strict=True):
        assert abs(single - sharded) <= 1e-6 * abs(single)
    assert "multiple of the number of devices (4)" in out["error"]
    assert (
        out["build_error"]
        == "trainer.batch_size (6) must be a multiple of the number of devices (4) for data parallelism"
    )
    assert out["pool_error"] == (
        "task.pool_size (18) must be a multiple of the number of devices (4) for data parallelism"
    )

    # Its checkpoint restores on this process's single device (a 4-device run grown or resumed on a laptop)
    task, model, trainer = build(compose(*TINY, *OVERRIDES))
    optimizer = nnx.Optimizer(model, trainer.optimizer(trainer.learning_rate), wrt=nnx.Param)
    step, pool, _, _ = RunCheckpointer.find(tmp_path / "parallel").restore(
        model, optimizer, init_pool(task, jax.random.key(1), task.pool_size)
    )
    assert step == 3 and pool.state.shape[0] == 16 and len(pool.state.devices()) == 1
