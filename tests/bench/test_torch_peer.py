"""The PyTorch peer computes the same NCA as nca_lab (runs where PyTorch is installed)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

torch = pytest.importorskip("torch", reason="the PyTorch peer is optional (pip install torch)")
torch_impl = pytest.importorskip("nca_lab.bench.torch_impl")


def test_torch_peer_perceives_and_updates_like_nca_lab():
    channels, hidden = 6, 10
    peer = torch_impl.TorchNCA(channels, hidden, alive=True)
    torch.nn.init.normal_(peer.out.weight)
    update = ResidualUpdate(3 * channels, channels, hidden_sizes=[hidden], zero_init=False, rngs=nnx.Rngs(0))
    update.hidden[0].kernel.set_value(jnp.asarray(peer.hidden.weight.detach().numpy()[:, :, 0, 0].T))
    update.hidden[0].bias.set_value(jnp.asarray(peer.hidden.bias.detach().numpy()))
    update.out.kernel.set_value(jnp.asarray(peer.out.weight.detach().numpy()[:, :, 0, 0].T))
    update.out.bias.set_value(jnp.asarray(peer.out.bias.detach().numpy()))
    state = np.random.default_rng(0).normal(size=(2, 7, 9, channels)).astype(np.float32)

    ours = update.delta(SobelPerceive(channels)(jnp.asarray(state)))
    x = torch.as_tensor(state).permute(0, 3, 1, 2)
    with torch.no_grad():
        perception = torch.nn.functional.conv2d(x, peer.kernel, padding=1, groups=channels)
        theirs = peer.out(torch.relu(peer.hidden(perception))).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)
