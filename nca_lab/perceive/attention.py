"""Multi-head self-attention over each cell's 3x3 neighbourhood (the attention-based NCA).

Reference: Tesfaldet et al., "Attention-based Neural Cellular Automata", NeurIPS 2022
(ViTCA): every cell is a token that attends only to its Moore neighbourhood, so the rule
stays local and can run on any grid. CAX's example (``examples/48_attention_nca``) computes
this by flattening the grid to ``H * W`` tokens and masking a dense ``(HW) x (HW)`` attention
matrix, which costs ``O((HW)^2)`` time and memory (a 27M-entry mask on a 72x72 grid, and a
score matrix of that size per head); ViTCA gathers the 9 neighbours with a convolution of
one-hot filters. Here the 9 keys and values of a cell are read as shifted slices of one padded grid
(:mod:`nca_lab.perceive.stencil`), so time and memory grow linearly with the cells and neither a
gather nor any ``HW x HW`` array (scores or mask) is ever built.

Positional information is relative: a learned vector per neighbour offset and head is added to
that neighbour's key and to its value (after Shaw et al., "Self-Attention with Relative
Position Representations", NAACL 2018, whose vectors are shared by the heads). The key term
lets a head attend by direction (a head can learn to read "the cell to the left", which plain
dot-product attention over a set cannot); the value term tells the output which direction its
content came from, the information a Sobel filter provides. There are only 9 offsets whatever
the grid size, so a model trained on one grid runs unchanged on another, and away from the
border the rule is translation equivariant like every other NCA perceive. Absolute encodings
(ViTCA's Fourier features, CAX's learned row and column embeddings) were left out: they tie the
rule to a position on the grid, and CAX's learned table even fixes the largest grid.

Other differences from ViTCA's model, for comparing with its numbers: LayerNorm, with
``layer_norm=True``, before the attention and the feed-forward block (ViTCA also normalises
before its output head); the feed-forward block (``x + FF(LN x)``, exact GELU) only with
``feed_forward=<width>``: by default the residual update's ReLU MLP stands in for it and for
ViTCA's zero-initialised output head; other default sizes (ViTCA's model class defaults to one
head as wide as a cell's features, 32 when it embeds the cells first); no bias in the
attention's output projection (ViTCA's has one, and with one head no projection at all); at the
border, by default, a ring of cells of state ``padding`` (``padding="vitca"``: ViTCA's rule,
zero keys and values off the grid, which stay in the softmax with score 0; only the cells on
the border ring perceive differently). ViTCA keeps the corrupted input in channels the update
never changes: here ``task.fixed_input=true`` (diffusing, inpainting; ``NCA(fixed_channels=4)``),
off by default; its output starts at the corrupted input, or at ViTCA's 0.5 grey with
``task.output_init=grey``.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nca_lab.errors import is_number, require
from nca_lab.perceive.base import Perceive
from nca_lab.perceive.stencil import OFFSETS, pad_grid, shifted


class AttentionPerceive(Perceive):
    """Local multi-head attention: each cell queries its 9 neighbours (itself included).

    For a state ``x`` of shape ``(..., H, W, C)``:

    * tokens ``e = x W_e + b_e`` (``perception_size`` features), computed on the grid padded
      by one cell of value ``padding``; with ``layer_norm``, queries, keys and values are
      made from ``LayerNorm(e)`` instead (a pre-norm transformer block, ViTCA's ``x + MHSA(LN x)``);
    * per head ``h`` and offset ``o = (dr, dc)``, with ``n = (i + dr, j + dc)``:
      ``k_o = e_n W_k + r_k[o]``, ``v_o = e_n W_v + r_v[o]``, ``q = e_{ij} W_q``;
    * ``a_o = softmax_o(q . k_o / sqrt(d_head))`` over the 9 offsets;
    * perception ``= e_{ij} + (sum_o a_o v_o) W_out``, the residual form of a transformer
      block (ViTCA's ``x + MHSA(x)``), so the update sees its own cell undiluted;
    * with ``feed_forward``, then ``p + GELU(p W_1 + b_1) W_2 + b_2`` per cell (of
      ``LayerNorm(p)`` with ``layer_norm``): the rest of ViTCA's transformer block.

    With ``padding=None`` the neighbours outside the grid are left out of the softmax (as CAX's
    dense mask does) instead of being cells of a constant state; with ``padding="vitca"`` their
    keys and values are zero, offsets included (ViTCA zero-pads its projected keys and values):
    each has score 0 in the softmax and adds nothing to the sum.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        perception_size: int = 48,
        num_heads: int = 4,
        qkv_features: int | None = None,
        padding: float | Literal["vitca"] | None = 0.0,
        layer_norm: bool = False,
        feed_forward: int | None = None,
        rngs: nnx.Rngs,
    ):
        """Build the perceive.

        Args:
            num_channels: state channels ``C``.
            perception_size: features of a token and of the perception (``out_features``).
            num_heads: attention heads; must divide ``qkv_features``.
            qkv_features: total width of queries, keys and values (default ``perception_size``).
            padding: the state value of the cells outside the grid (0: empty cells, as the
                other perceives), ``None`` to leave them out of the attention, or ``"vitca"``
                for zero keys and values there (ViTCA's border).
            layer_norm: normalise the tokens before the attention (ViTCA's pre-norm), and
                before the feed-forward block.
            feed_forward: hidden width of a feed-forward block after the attention (ViTCA's
                ``x + FF(LN x)``), or ``None`` for none.
            rngs: parameter initialisation stream.
        """
        qkv_features = perception_size if qkv_features is None else qkv_features
        require(int(num_channels) > 0, f"num_channels must be positive, got {num_channels}")
        require(int(perception_size) > 0, f"perceive.perception_size must be positive, got {perception_size}")
        require(int(num_heads) > 0, f"perceive.num_heads must be positive, got {num_heads}")
        require(int(qkv_features) > 0, f"perceive.qkv_features must be positive, got {qkv_features}")
        require(
            feed_forward is None or int(feed_forward) > 0,
            f"perceive.feed_forward must be a positive width or null, got {feed_forward}",
        )
        require(
            int(qkv_features) % int(num_heads) == 0,
            f"perceive.num_heads ({num_heads}) must divide perceive.qkv_features ({qkv_features}; "
            "it defaults to perception_size)",
        )
        self.num_channels = int(num_channels)
        self.out_features = int(perception_size)
        self.num_heads = int(num_heads)
        self.head_size = int(qkv_features) // self.num_heads
        require(
            padding in (None, "vitca") or (is_number(padding) and math.isfinite(padding)),
            f"perceive.padding must be a number, null or vitca, got {padding!r}",
        )
        self.padding = padding if padding in (None, "vitca") else float(padding)
        qkv = int(qkv_features)
        self.embed = nnx.Linear(self.num_channels, self.out_features, rngs=rngs)
        self.qkv = nnx.Linear(self.out_features, 3 * qkv, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(qkv, self.out_features, use_bias=False, rngs=rngs)
        # Unit scale, like the +-1 taps of a Sobel filter: direction matters from the first step.
        relative_init = nnx.initializers.normal(stddev=1.0)
        self.key_offsets = nnx.Param(relative_init(rngs.params(), (3, 3, qkv)))
        self.value_offsets = nnx.Param(relative_init(rngs.params(), (3, 3, qkv)))
        # Last: the other weights are those of the same seed without it (an ablation changes one thing).
        self.norm = nnx.LayerNorm(self.out_features, rngs=rngs) if layer_norm else None
        # After the rest, for the same reason.
        wide = None if feed_forward is None else int(feed_forward)
        self.ff_norm = nnx.LayerNorm(self.out_features, rngs=rngs) if wide and layer_norm else None
        self.ff_hidden = nnx.Linear(self.out_features, wide, rngs=rngs) if wide else None
        self.ff_out = nnx.Linear(wide, self.out_features, rngs=rngs) if wide else None

    def __call__(self, state: jnp.ndarray) -> jnp.ndarray:
        """Perception ``(..., H, W, perception_size)`` of a state ``(..., H, W, C)``."""
        height, width = state.shape[-3], state.shape[-2]
        tokens = self.embed(pad_grid(state, self.padding if isinstance(self.padding, float) else 0.0))
        normed = tokens if self.norm is None else self.norm(tokens)
        q, k, v = jnp.split(self.qkv(normed), 3, axis=-1)  # on the padded grid

        def split_heads(x: jnp.ndarray) -> jnp.ndarray:
            return x.reshape(*x.shape[:-1], self.num_heads, self.head_size)

        q = split_heads(shifted(q, 0, 0)) * self.head_size**-0.5
        key_offsets, value_offsets = self.key_offsets[...], self.value_offsets[...]
        # Which neighbours lie on the grid: a trace-time constant, used with padding=None and vitca.
        inside = np.pad(np.ones((height, width, 1), bool), ((1, 1), (1, 1), (0, 0)))
        zero_outside = self.padding == "vitca"
        off_grid_logit = {None: -jnp.inf, "vitca": 0.0}.get(self.padding)  # None: off-grid cells are cells

        logits = []
        for dr, dc in OFFSETS:
            k_o = split_heads(shifted(k, dr, dc) + key_offsets[dr + 1, dc + 1])
            logit = jnp.sum(q * k_o, axis=-1)  # (..., H, W, heads)
            if off_grid_logit is not None:
                logit = jnp.where(shifted(inside, dr, dc), logit, off_grid_logit)
            logits.append(logit)
        weights = jax.nn.softmax(jnp.stack(logits, axis=-1), axis=-1)  # (..., H, W, heads, 9)

        attended = None
        for index, (dr, dc) in enumerate(OFFSETS):
            v_o = split_heads(shifted(v, dr, dc) + value_offsets[dr + 1, dc + 1])
            if zero_outside:
                v_o = jnp.where(shifted(inside, dr, dc)[..., None], v_o, 0.0)
            term = weights[..., index, None] * v_o
            attended = term if attended is None else attended + term
        attended = attended.reshape(*state.shape[:-1], -1)
        perception = shifted(tokens, 0, 0) + self.out(attended)
        if self.ff_hidden is None:
            return perception
        normed = perception if self.ff_norm is None else self.ff_norm(perception)
        return perception + self.ff_out(jax.nn.gelu(self.ff_hidden(normed), approximate=False))
