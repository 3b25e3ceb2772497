"""The CAX peer computes the same NCA as nca_lab, so the bench's ratios compare like with like."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.bench.suites import FIRE_RATE
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

cax_impl = pytest.importorskip("nca_lab.bench.cax_impl", reason="the CAX peer needs CAX (pip install cax)")
from cax.core.update import MLPUpdate  # noqa: E402

CHANNELS, HIDDEN = 4, 10
#: CAX's perception of channel c is (identity, rows' gradient, columns' gradient) at 3c..3c+2;
#: nca_lab's, the original's order, (identity, x = columns, y = rows): CAX's = nca_lab's[..., SWAP].
SWAP = np.arange(3 * CHANNELS).reshape(CHANNELS, 3)[:, [0, 2, 1]].reshape(-1)


def state() -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 9, CHANNELS)), jnp.float32)


def test_cax_peer_perceives_the_sobel_features_of_nca_lab():
    """Identity and both Sobel gradients of each channel, normalised and signed alike."""
    peer = cax_impl.SobelNCA(CHANNELS, HIDDEN, rngs=nnx.Rngs(0))
    ours = np.asarray(SobelPerceive(CHANNELS)(state()))
    np.testing.assert_allclose(np.asarray(peer.perceive(state())), ours[..., SWAP], atol=1e-5)


def test_cax_peer_updates_with_the_residual_mlp_of_nca_lab():
    """One hidden layer of the case's width, relu, the last layer zero at first, each cell's
    update dropped with probability 1 - fire rate; with nca_lab's weights, nca_lab's update."""
    peer = cax_impl.SobelNCA(CHANNELS, HIDDEN, rngs=nnx.Rngs(0))
    first, last = peer.update.layers
    assert (first.kernel[...].shape, last.kernel[...].shape) == ((1, 1, 3 * CHANNELS, HIDDEN), (1, 1, HIDDEN, CHANNELS))
    assert not np.asarray(last.kernel[...]).any() and peer.update.dropout.rate == 1 - FIRE_RATE

    ours = ResidualUpdate(3 * CHANNELS, CHANNELS, hidden_sizes=[HIDDEN], zero_init=False, rngs=nnx.Rngs(1))
    first.kernel.set_value(ours.hidden[0].kernel[...][SWAP][None, None])  # rows in CAX's feature order
    first.bias.set_value(ours.hidden[0].bias[...])
    last.kernel.set_value(ours.out.kernel[...][None, None])
    last.bias.set_value(ours.out.bias[...])
    theirs = MLPUpdate.__call__(peer.update, state(), peer.perceive(state()))  # before dropout and the residual
    np.testing.assert_allclose(
        np.asarray(theirs), np.asarray(ours.delta(SobelPerceive(CHANNELS)(state()))), rtol=1e-5, atol=1e-5
    )
