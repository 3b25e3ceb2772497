"""The architecture of the original Growing-NCA models, rebuilt as an nca_lab :class:`NCA`.

Every model the authors released (the article's web demo, the TF.js graph-models of the
self-organising-systems repository) is the notebook's ``CAModel``: 16 channels, fixed
identity/Sobel perception (48 features, ordered ``channel * 3 + filter``), a dense layer of
128 relu units, a dense layer back to 16 channels, fire rate 0.5, step size 1 and the alive
mask at alpha 0.1. nca_lab's :class:`~nca_lab.perceive.sobel.SobelPerceive` and
:class:`~nca_lab.update.residual.ResidualUpdate` are that model, so importing is only
putting the four released tensors into the right parameters.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020;
google-research/self-organising-systems, ``notebooks/growing_ca.ipynb`` (``CAModel``).
"""

import numpy as np
from flax import nnx

from nca_lab.alive import ALIVE_THRESHOLD
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

#: State channels of every released model (RGBA + 12 hidden).
CHANNELS = 16
#: Perception features: identity, Sobel-x and Sobel-y of each channel.
PERCEPTION = 3 * CHANNELS
#: Width of the one hidden layer.
HIDDEN = 128
#: Fire rate all released models were trained and are run with.
FIRE_RATE = 0.5


def original_nca(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    *,
    alive_threshold: float = ALIVE_THRESHOLD,
) -> NCA:
    """An :class:`NCA` with the original architecture and the given dense weights.

    Args:
        w1: first layer ``(48, 128)``, inputs in TF order ``channel * 3 + filter``.
        b1: first layer bias ``(128,)``.
        w2: second layer ``(128, 16)``.
        b2: second layer bias ``(16,)``.
        alive_threshold: alpha threshold of the alive mask.

    Returns:
        The model, fire rate 0.5 and step size 1 as the released models were run.
    """
    rngs = nnx.Rngs(params=0)
    update = ResidualUpdate(PERCEPTION, CHANNELS, hidden_sizes=[HIDDEN], fire_rate=FIRE_RATE, rngs=rngs)
    hidden, out = update.hidden[0], update.out
    for param, value in ((hidden.kernel, w1), (hidden.bias, b1), (out.kernel, w2), (out.bias, b2)):
        param[...] = np.asarray(value, np.float32).reshape(param.shape)
    return NCA(SobelPerceive(CHANNELS), update, alive_threshold=float(alive_threshold))
