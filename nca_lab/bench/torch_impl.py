"""The PyTorch side of a benchmark case: a plain eager NCA, the reference speed on a CPU.

This is the PyTorch Growing-NCA every port of the authors' notebook writes: channels-first
``(N, C, H, W)`` states, the perception as one depthwise ``conv2d`` with fixed identity and
Sobel kernels (``groups=C``), the update as two 1x1 convolutions (the last zero-initialised),
a per-cell Bernoulli fire mask, the alive mask from a 3x3 max-pool of alpha before and after
the update, a Python loop over CA steps, ``loss.backward()``, global-norm clipping and Adam.
Growing cases keep a pool on the tensor side (sample without replacement, sort by loss,
reseed the worst), diffusing cases denoise a freshly corrupted target each step. Eager
mode, no ``torch.compile``: the peer is a plain PyTorch eager NCA, as researchers write one.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020.
Requires PyTorch (``pip install torch``); the attention suite has no PyTorch peer.
"""

import numpy as np

from nca_lab.alive import ALIVE_THRESHOLD
from nca_lab.bench.measure import Workload
from nca_lab.bench.suites import FIRE_RATE, LEARNING_RATE, TARGET_SIZE, Case
from nca_lab.data.images import load_target
from nca_lab.errors import require
from nca_lab.perceive.sobel import sobel_kernels

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without PyTorch
    raise ImportError("the PyTorch peer needs PyTorch: pip install torch") from exc


class TorchNCA(nn.Module):
    """Sobel perceive + residual MLP update, channels-first, RGBA in channels 0-3."""

    def __init__(self, channels: int, hidden: int, *, alive: bool):
        """Fixed depthwise kernels ``channel * 3 + filter`` and a zero-initialised last layer."""
        super().__init__()
        kernels = torch.as_tensor(sobel_kernels(), dtype=torch.float32)  # (3, 3, 3): filter, row, col
        self.register_buffer("kernel", kernels.repeat(channels, 1, 1)[:, None])  # (3C, 1, 3, 3)
        self.hidden = nn.Conv2d(3 * channels, hidden, 1)
        self.out = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.channels, self.alive = channels, alive

    def _alive(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x[:, 3:4], 3, stride=1, padding=1) > ALIVE_THRESHOLD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One CA step of ``x (N, C, H, W)``."""
        perception = F.conv2d(x, self.kernel, padding=1, groups=self.channels)
        dx = self.out(torch.relu(self.hidden(perception)))
        fire = (torch.rand(x.shape[0], 1, *x.shape[2:]) <= FIRE_RATE).to(x.dtype)
        new = x + dx * fire
        if not self.alive:
            return new
        return new * (self._alive(x) & self._alive(new)).to(x.dtype)


def build(case: Case, seed: int = 0) -> Workload:
    """The PyTorch workload of ``case`` (growing and diffusing, train and rollout)."""
    require(case.perceive == "sobel", "the PyTorch peer implements the Sobel NCA only")
    torch.manual_seed(seed)
    channels, batch_size, num_steps = case.channels, case.batch, case.steps
    target = torch.as_tensor(np.asarray(load_target("🦎", TARGET_SIZE, case.padding))).permute(2, 0, 1)
    model = TorchNCA(channels, case.hidden, alive=case.task == "growing")

    seed_state = torch.zeros(channels, case.grid, case.grid)
    seed_state[3:, case.grid // 2, case.grid // 2] = 1.0

    def rollout(x: torch.Tensor) -> torch.Tensor:
        for _ in range(num_steps):
            x = model(x)
        return x

    def per_sample_mse(x: torch.Tensor) -> torch.Tensor:
        return (x[:, :4] - target).square().mean(dim=(1, 2, 3))

    if case.kind == "rollout":
        state = seed_state.expand(batch_size, -1, -1, -1).clone()

        @torch.no_grad()
        def forward_only(i: int):
            return rollout(state)

        return Workload(call=forward_only, trace=None, note="eager, Python loop, no_grad")

    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    pool = seed_state.expand(max(case.pool, batch_size), -1, -1, -1).clone() if case.task == "growing" else None

    def train_step(i: int):
        if pool is not None:
            idx = torch.randperm(pool.shape[0])[:batch_size]
            x = pool[idx]
            with torch.no_grad():
                order = torch.argsort(per_sample_mse(x), descending=True)
            idx, x = idx[order], x[order].clone()
            x[0] = seed_state
        else:
            alpha = torch.rand(batch_size, 1, 1, 1)
            noisy = ((1 - alpha) * target + alpha * torch.randn(batch_size, *target.shape)).clamp(0.0, 1.0)
            x = torch.cat([noisy, torch.zeros(batch_size, channels - 4, case.grid, case.grid)], dim=1)
        final = rollout(x)
        loss = per_sample_mse(final).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if pool is not None:
            pool[idx] = final.detach()
        return loss.item()

    extra = f", pool {pool.shape[0]}" if pool is not None else ""
    return Workload(call=train_step, trace=None, note=f"eager, Python loop, {torch.get_num_threads()} threads{extra}")
