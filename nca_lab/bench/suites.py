"""The benchmark suites: what is run, at which size (README, "Benchmarks").

Every suite is one or more cases; a case fixes the batch, the grid, the rollout length and
the model, and is either a full training step (``train``) or a forward rollout
(``rollout``). Grids are an emoji target of 40 cells padded on every side, the setting of
Growing NCA (Mordvintsev et al., Distill 2020): 72 = 40 + 2 * 16.
"""

from dataclasses import dataclass, replace

TARGET_SIZE = 40
#: The settings every implementation trains with (those of CAX's examples): Adam's learning
#: rate and the probability that a cell updates at a step.
LEARNING_RATE = 2e-3
FIRE_RATE = 0.5
#: Rollout length used on a CPU when ``--steps`` is not given: full-length rollouts take
#: minutes per step there (the peer's more than a minute per growing step).
CPU_STEPS = 8


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration.

    Attributes:
        suite: the suite it belongs to.
        name: what distinguishes it within the suite (batch and grid).
        kind: ``"train"`` (sample, rollout, backward, optimizer step) or ``"rollout"`` (forward only).
        task: ``"growing"`` (seed to target, a sample pool if ``pool`` > 0) or ``"diffusing"``
            (denoise a noisy target; no alive mask in nca_lab and PyTorch, CAX's example keeps it).
        perceive: ``"sobel"`` or ``"attention"``.
        batch: samples per step.
        grid: side of the square grid.
        steps: CA steps per rollout.
        channels: state channels.
        hidden: width of the update MLP's hidden layer.
        pool: sample pool size (0: fresh samples every step).
        peer_remat: run the peer with rematerialised steps (it does not fit without).
    """

    suite: str
    name: str
    kind: str
    task: str
    perceive: str
    batch: int
    grid: int
    steps: int
    channels: int = 16
    hidden: int = 128
    pool: int = 0
    peer_remat: bool = False

    @property
    def padding(self) -> int:
        """Cells of padding around the 40-cell target that make the grid."""
        return (self.grid - TARGET_SIZE) // 2

    @property
    def cell_steps(self) -> int:
        """Cell updates per benchmarked call: ``batch * grid**2 * steps``."""
        return self.batch * self.grid * self.grid * self.steps


def _growing(suite: str, batch: int, grid: int, **kw) -> Case:
    return Case(suite, f"{batch}x{grid}x{grid}", "train", "growing", "sobel", batch, grid, 96, pool=1024, **kw)


SUITES: dict[str, tuple[Case, ...]] = {
    "growing": (_growing("growing", 8, 72),),
    "diffusing": (Case("diffusing", "8x72x72", "train", "diffusing", "sobel", 8, 72, 64, channels=64, hidden=256),),
    "scaled": (_growing("scaled", 64, 128, peer_remat=True),),
    "rollout": tuple(Case("rollout", f"{b}x72x72", "rollout", "growing", "sobel", b, 72, 96) for b in (8, 256)),
    "attention": tuple(Case("attention", f"4x{g}x{g}", "train", "diffusing", "attention", 4, g, 32) for g in (72, 128)),
}


def cases(names: list[str], steps: int | None) -> list[Case]:
    """The cases of the suites ``names`` (each once), with every rollout ``steps`` long if given."""
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    selected = [case for name in dict.fromkeys(names) for case in SUITES[name]]
    return [replace(case, steps=steps) for case in selected] if steps else selected


def suite_steps(case: Case) -> int:
    """The rollout length of ``case`` in its suite, before ``--steps`` or the CPU shortened it."""
    return next(c.steps for c in SUITES[case.suite] if c.name == case.name)
