"""One Growing-NCA step (Sobel perceive, one-hidden-layer residual MLP, alive mask) as two Pallas kernels.

On a GPU the plain XLA step runs ~20 small kernels per CA step (the stencil, two matmuls,
bias and relu, the fire and alive masks), each a pass over device memory, while the
arithmetic of a whole 8 x 72x72 step takes microseconds. Here a step is two kernels: the
first reads each cell's 3x3 neighbourhood, computes the identity and Sobel features, both
dense layers and the pre-update alive mask in registers, applies the fire mask (read, not
drawn: see below) and writes the updated cell; the second applies the post-update alive
mask (which needs the neighbours' new alpha, hence a second pass). Hidden activations never
reach device memory.

Layout. A ``(B, H, W, C)`` state is zero-padded by one cell, flattened per sample to
``(H + 2) * (W + 2)`` cells and given margins of ``W + 3`` cells before and enough after
(:class:`FlatLayout`), so that every neighbour of a computed cell is ``cell + offset`` for a
constant ``offset``: a kernel loads each of the 9 neighbour tiles as one contiguous block,
without masks or gathers. Cells outside the grid are written as zero; the margins are never
written and never used (their contents are undefined). A rollout converts once at each end.

Buffers. The kernels read a step's state from, and write the next into, a buffer of a
rollout's states in place (:func:`slots`), read the step's fire mask from the rollout's, and
take the MLP's weights as one packed array (:func:`pack_weights`), so that a rollout's loop
(:mod:`nca_lab.kernels.fused_rollout`) needs no XLA operation between kernels.

The fire masks are drawn outside the kernels by the same ``jax.random`` calls as the
reference's steps (:meth:`~nca_lab.update.residual.ResidualUpdate.fire_mask`), so both paths
make the same random draws and compute the same function (``tests/perf/test_fused_step.py``
checks them against each other in Pallas' interpreter on the CPU).

Measured on an H200 (2026-11-30, ``experiments/bench/h200_2026-11-30_fused``), with one
custom VJP per step (before the rollout's buffers): forward and backward kernels agree with
the XLA path there to ~2e-5 relative (TF32 dots, Pallas' default for float32; IEEE float32
dots in Triton were 50x slower). With the launches of :func:`forward_launch` and
:class:`Launch`, the growing train step (8 x 72x72, 96 steps) took 12.2 ms against XLA's
15.8, the scaled one (64 x 128x128) 156.6 against 214.4, a rollout of 256 x 72x72 57.7
against 71.7; the diffusing step (C=64, hidden 256) 43.8 against 23.1, since its activations
and weight-gradient partials outgrow the registers. Hence opt-in.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020
(``CAModel``).
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from nca_lab.alive import ALPHA
from nca_lab.perceive.sobel import sobel_kernels
from nca_lab.perceive.stencil import OFFSETS

#: Cells the flat layout is padded to a multiple of: the most cells a program may take.
BLOCK = 128

#: ``a b``, ``a^T b`` and ``a b^T`` as ``dot_general`` dimension numbers.
NN = (((1,), (0,)), ((), ()))
TN = (((0,), (0,)), ((), ()))
NT = (((1,), (1,)), ((), ()))


def dot(a, w, dims=NN):
    """The kernels' products, accumulated in float32; float32 operands run at Pallas' default
    precision on Triton, TF32."""
    return jax.lax.dot_general(a, w, dims, preferred_element_type=jnp.float32)


@dataclass(frozen=True)
class Launch:
    """How a kernel is launched: ``cells`` per program (a power of two dividing the layout's
    ``block``, as Triton needs), ``warps`` per program, and the hidden layer's columns a
    program computes at a time (``hidden_chunk``).

    A program holds ``cells x hidden_chunk`` activations in registers, and in the backward
    pass ``C x hidden_chunk`` weight-gradient shares. The defaults (:func:`forward_launch`, and
    this class's for the backward kernel) were measured on an H200 (``experiments/gpu/sweep.py``,
    2026-11-30, before ``hidden_chunk``; µs per CA step, forward / backward, at 128 cells with
    8 warps, then 4): growing (C=16, hidden 128, 8 x 72x72) 35 / 69, then 43 / 126; diffusing
    (C=64, hidden 256) 138 / 477, then 385 / 873; scaled (the growing model, 64 x 128x128)
    639 / 1040, then 478 / 1961. Fewer cells per program were no faster, except diffusing's
    backward at 32 cells and 8 warps (445). Diffusing's whole hidden layer of 256 spilled
    registers; chunks of 128 make each chunk growing-sized (not yet measured on a GPU).

    ``chunk_loop``: the chunks run in a loop (``fori_loop``) instead of one after the other in
    straight-line code, where the compiler interleaves them and keeps several chunks' values
    live. Counted offline for an H100/H200 (``experiments/gpu/registers.py``, which compiles
    the kernels with PyPI's Triton without a GPU; bytes spilled per thread): growing's
    gradient kernel at 128 cells and 8 warps spills 28 with one chunk of 128 (the default),
    1040 unrolled in chunks of 64 and none looped (231 registers); at 64 cells and 4 warps,
    where two programs share a multiprocessor, none looped in chunks of 64 or 32 (245 and 190
    registers). Not yet timed on a GPU, hence off. XLA's own compile for an H100
    (``experiments/gpu/aot.py``, ``aot_2026-12-01.md``) finds no spills either for growing's
    looped chunks (of 64: update kernel 118 registers, two programs per multiprocessor instead
    of one) and refuses diffusing's at 128 cells (more shared memory than a block may have).
    """

    cells: int = BLOCK
    warps: int = 8
    hidden_chunk: int = 128
    chunk_loop: bool = False

    def programs(self, layout: "FlatLayout") -> int:
        """Programs per sample that cover ``layout``'s padded grid."""
        if layout.block % self.cells or self.cells & (self.cells - 1):
            raise ValueError(f"cells per program must be a power of two dividing {layout.block}, got {self.cells}")
        return layout.num_blocks * layout.block // self.cells

    def hidden_columns(self, hidden: int) -> list:
        """The column ranges (``pl.ds``) of a hidden layer of ``hidden`` units, a chunk each; the
        whole layer at once where ``hidden_chunk`` does not divide it."""
        size = self.hidden_chunk if hidden % self.hidden_chunk == 0 else hidden
        return [pl.ds(start, size) for start in range(0, hidden, size)]

    def over_hidden(self, hidden: int, body, carry):
        """``carry = body(columns, carry)`` for the :meth:`hidden_columns` of a hidden layer of
        ``hidden`` units, in order: unrolled, or in a ``fori_loop`` with ``chunk_loop``."""
        columns = self.hidden_columns(hidden)
        if not self.chunk_loop or len(columns) == 1:
            for chunk in columns:
                carry = body(chunk, carry)
            return carry
        size = columns[0].size

        def step(k, carry):
            return body(pl.ds(pl.multiple_of(k * size, size), size), carry)

        return jax.lax.fori_loop(0, len(columns), step, carry)


#: Programs of a forward step up to which its update kernel runs 8 warps per program, above
#: which 4: the measured crossing lies between 344 programs (8 x 72x72) and 8,512 (64 x 128x128).
FEW_PROGRAMS = 2048


def forward_launch(layout: "FlatLayout", batch: int) -> Launch:
    """The update kernel's launch: few programs gain from more warps each, many from more
    programs per multiprocessor (:class:`Launch`'s measurements)."""
    return Launch(cells=layout.block, warps=8 if batch * layout.num_blocks <= FEW_PROGRAMS else 4)


def backward_launch(layout: "FlatLayout") -> Launch:
    """The gradient kernel's launch, and so its weight partials' shape: the layout's block, 8 warps."""
    return Launch(cells=layout.block)


def light_launch(layout: "FlatLayout") -> Launch:
    """The launch of the kernels that hold no hidden activations (alive mask, stencil
    transpose): the layout's block and 4 warps, as measured with them."""
    return Launch(cells=layout.block, warps=4)


@dataclass(frozen=True)
class FlatLayout:
    """Where the cells of an ``H x W`` grid live in the padded, flattened layout."""

    height: int
    width: int
    block: int = BLOCK

    @property
    def row(self) -> int:
        """Cells per padded row."""
        return self.width + 2

    @property
    def margin(self) -> int:
        """Cells before the padded grid: the furthest neighbour offset."""
        return self.width + 3

    @property
    def num_blocks(self) -> int:
        """Programs per sample: they cover the padded grid."""
        return pl.cdiv((self.height + 2) * self.row, self.block)

    @property
    def length(self) -> int:
        """Flat cells per sample, margins included."""
        return 2 * self.margin + self.num_blocks * self.block

    def offsets(self) -> list[int]:
        """Flat offsets of the 3x3 neighbours, row-major as :data:`~nca_lab.perceive.stencil.OFFSETS`."""
        return [dr * self.row + dc for dr, dc in OFFSETS]

    def to_flat(self, x: jnp.ndarray) -> jnp.ndarray:
        """``(B, H, W, C)`` -> ``(B, length, C)``."""
        b, h, w, c = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, (h + 2) * (w + 2), c)
        tail = self.length - self.margin - padded.shape[1]
        return jnp.pad(padded, ((0, 0), (self.margin, tail), (0, 0)))

    def from_flat(self, flat: jnp.ndarray) -> jnp.ndarray:
        """``(B, length, C)`` -> ``(B, H, W, C)``."""
        h, w = self.height, self.width
        grid = flat[:, self.margin : self.margin + (h + 2) * (w + 2)]
        return grid.reshape(flat.shape[0], h + 2, w + 2, flat.shape[2])[:, 1:-1, 1:-1]


def supports(num_channels: int, hidden: int) -> bool:
    """Whether the kernels take these sizes: Triton's dots want multiples of 16, and the packed
    weights (:func:`pack_weights`) keep ``b2`` in a row of ``hidden`` columns."""
    return num_channels % 16 == 0 and hidden % 16 == 0 and hidden >= num_channels >= 16


def inside_grid(layout: FlatLayout, start, cells: int) -> jnp.ndarray:
    """Boolean ``(cells,)``: which of the ``cells`` cells from flat ``start`` on are in the grid."""
    padded = start - layout.margin + jax.lax.broadcasted_iota(jnp.int32, (cells,), 0)
    r, c = padded // layout.row, padded % layout.row
    return (r >= 1) & (r <= layout.height) & (c >= 1) & (c <= layout.width)


def program_cells(layout: FlatLayout, cells: int) -> tuple:
    """``(b, j, start, here)`` of the running program: its sample, its block, its first flat
    cell and the ``pl.ds`` of its cells."""
    b, j = pl.program_id(0), pl.program_id(1)
    start = layout.margin + j * cells
    return b, j, start, pl.ds(start, cells)


def neighbour_tiles(states_ref, read, b, start, layout: FlatLayout, cells: int) -> list:
    """The 9 ``(cells, C)`` neighbour tiles of a program's cells in state slot ``read``, in
    :data:`OFFSETS` order."""
    return [states_ref[read, b, pl.ds(start + off, cells), :] for off in layout.offsets()]


def _alpha(tile: jnp.ndarray) -> jnp.ndarray:
    """Channel :data:`ALPHA` of a ``(block, C)`` tile (a masked sum: Triton cannot index a column)."""
    pick = jax.lax.broadcasted_iota(jnp.int32, tile.shape, 1) == ALPHA
    return jnp.sum(jnp.where(pick, tile, 0.0), axis=1)


def sobel_taps(angle: float) -> list[tuple[float, float]]:
    """``(grad_x, grad_y)`` weights of the 9 neighbours, in :meth:`FlatLayout.offsets` order."""
    _, grad_x, grad_y = sobel_kernels(angle)
    return [(float(grad_x[dr + 1][dc + 1]), float(grad_y[dr + 1][dc + 1])) for dr, dc in OFFSETS]


def perception(tiles: list, taps: list[tuple[float, float]]) -> tuple:
    """``(identity, grad_x, grad_y)`` features of a block from its 9 neighbour tiles (zero taps skipped)."""
    grad_x = grad_y = None
    for tile, (kx, ky) in zip(tiles, taps, strict=True):
        if kx:
            grad_x = kx * tile if grad_x is None else grad_x + kx * tile
        if ky:
            grad_y = ky * tile if grad_y is None else grad_y + ky * tile
    return tiles[OFFSETS.index((0, 0))], grad_x, grad_y


def pack_weights(params: dict) -> jnp.ndarray:
    """The MLP's weights as one ``(4C + 2, hidden)`` array, the kernels' operand and the layout of
    their weight gradients (one buffer, one reduction): rows ``[0, C)``, ``[C, 2C)``, ``[2C, 3C)``
    the first layer's rows for the identity, grad_x and grad_y features (``w1``'s rows are
    ``channel * 3 + filter``), ``[3C, 4C)`` the second layer transposed, ``4C`` its bias ``b1``,
    ``4C + 1`` ``b2`` in its first ``C`` columns (hence ``hidden >= C``, :func:`supports`).

    Differentiable: a rollout packs once and autodiff carries the packed gradient back to the
    parameters once, outside the loop over CA steps.
    """
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    hidden, channels = w2.shape
    rows = [w1[0::3], w1[1::3], w1[2::3], w2.T, b1[None], jnp.pad(b2, (0, hidden - channels))[None]]
    return jnp.concatenate(rows)


def weight_columns(w_ref, channels: int, columns) -> tuple:
    """``(w_id, w_gx, w_gy, w2t, b1)``, their hidden ``columns`` (a ``pl.ds``), read from a
    packed weight ref (:func:`pack_weights`)."""
    c = channels
    return (*[w_ref[pl.ds(i * c, c), columns] for i in range(4)], w_ref[4 * c, columns])


def output_bias(w_ref, channels: int) -> jnp.ndarray:
    """``b2``, read from a packed weight ref (:func:`pack_weights`)."""
    return w_ref[4 * channels + 1, pl.ds(0, channels)]


def slots(step, history: bool) -> tuple:
    """``(read, write, mask)``: buffer indices of CA step ``step`` (a traced int32).

    A rollout that keeps every state for its backward pass (``history``) reads state ``step``,
    writes ``step + 1`` and keeps the step's alive mask at ``step``; one that does not
    alternates two states and overwrites one alive mask. The fire mask is always ``step``'s.
    """
    if history:
        return step, step + 1, step
    return step % 2, (step + 1) % 2, 0


def step_operands(step, count) -> tuple:
    """The kernels' int32 operands ``(step, count)``, each of shape ``(1,)``: a kernel of a step
    at or past ``count`` (the drawn rollout length) writes nothing. The loop over steps keeps its
    static length, since XLA:GPU syncs the host on every iteration of a loop whose trip count it
    does not know (``WhileThunk``), and may on every ``lax.cond``. Two operands, not one stacked
    pair: reshaping a scalar is free, stacking two was a kernel launch per step and loop
    (``experiments/gpu/aot.py``)."""
    return jnp.asarray(step, jnp.int32).reshape(1), jnp.asarray(count, jnp.int32).reshape(1)


def pallas_call(
    kernel, batch: int, layout: FlatLayout, launch: Launch, *, out_shape, interpret: bool, aliases=None, **static
):
    """``pl.pallas_call`` of ``kernel(*refs, layout, cells, **static)`` over ``(batch, programs
    per sample)``, with ``launch.cells`` cells per program, compiled by Triton with ``launch.warps``.
    ``aliases`` (``{input: output}``) lets a kernel write into a buffer it is given, in place."""
    compiler = None
    if not interpret:  # the Triton backend is imported only where it compiles
        from jax.experimental.pallas import triton as plgpu

        compiler = plgpu.CompilerParams(num_warps=launch.warps)
    return pl.pallas_call(
        functools.partial(kernel, layout=layout, cells=launch.cells, **static),
        out_shape=out_shape,
        grid=(batch, launch.programs(layout)),
        input_output_aliases=aliases or {},
        interpret=interpret,
        compiler_params=compiler,
    )


def _update_kernel(
    step_ref,
    count_ref,
    states_ref,
    fire_ref,
    w_ref,
    out_ref,
    *alive_refs,
    layout,
    cells,
    taps,
    step_size,
    history,
    in_place,
    over_hidden,
):
    """New cells of one block; for the alive mask, also their alpha and the pre-update 3x3 alpha max.

    With ``in_place`` (no alive mask) ``out_ref`` is the states buffer itself (aliased: the
    write slot is not the read one); otherwise a buffer of new cells that the alive kernel
    masks, and ``alive_refs`` are the pre-update max and the new alpha.
    """
    step = step_ref[0]
    read, write, _ = slots(step, history)
    b, _, start, here = program_cells(layout, cells)

    @pl.when(step < count_ref[0])
    def _():
        tiles = neighbour_tiles(states_ref, read, b, start, layout, cells)
        if not in_place:  # first, so that the tiles die with the perception (offline: 76 -> 0 bytes spilled)
            pre_ref, alpha_ref = alive_refs
            pre_ref[b, here] = functools.reduce(jnp.maximum, [_alpha(tile) for tile in tiles])
        centre, grad_x, grad_y = perception(tiles, taps)

        def add_chunk(columns, delta):
            w_id, w_gx, w_gy, w2t, b1 = weight_columns(w_ref, centre.shape[1], columns)
            hidden = dot(centre, w_id) + dot(grad_x, w_gx) + dot(grad_y, w_gy) + b1[None, :]
            return delta + dot(jnp.maximum(hidden, 0.0), w2t, NT)

        bias = jnp.broadcast_to(output_bias(w_ref, centre.shape[1])[None, :], centre.shape)
        delta = over_hidden(w_ref.shape[1], add_chunk, bias) * step_size
        fire = fire_ref[step, b, here][:, None]
        new = jnp.where(inside_grid(layout, start, cells)[:, None], centre + delta * fire, 0.0)
        if in_place:
            out_ref[write, b, here, :] = new
            return
        out_ref[b, here, :] = new
        alpha_ref[b, here] = _alpha(new)


def _alive_kernel(
    step_ref,
    count_ref,
    new_ref,
    pre_ref,
    alpha_ref,
    _states_in,
    _alive_in,
    states_ref,
    alive_ref,
    *,
    layout,
    cells,
    threshold,
    history,
):
    """``new * (alive(before) & alive(after))`` of one block into the states buffer, and that
    mask; zero outside the grid."""
    _, write, mask = slots(step_ref[0], history)
    b, _, start, here = program_cells(layout, cells)

    @pl.when(step_ref[0] < count_ref[0])
    def _():
        after = functools.reduce(jnp.maximum, [alpha_ref[b, pl.ds(start + off, cells)] for off in layout.offsets()])
        keep = inside_grid(layout, start, cells) & (pre_ref[b, here] > threshold) & (after > threshold)
        states_ref[write, b, here, :] = jnp.where(keep[:, None], new_ref[b, here, :], 0.0)
        alive_ref[mask, b, here] = keep.astype(alive_ref.dtype)


def forward_step(
    states: jnp.ndarray,
    alive: jnp.ndarray | None,
    fire: jnp.ndarray,
    packed: jnp.ndarray,
    step: jnp.ndarray,
    count: jnp.ndarray,
    layout: FlatLayout,
    *,
    history: bool,
    angle: float,
    step_size: float,
    alive_threshold: float | None,
    interpret: bool = False,
    launch: Launch | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """CA step ``step`` of a rollout in the flat layout, written in place into its buffers.

    The state is read from and written to ``states`` at the :func:`slots` of ``step``, so a
    rollout's loop passes its buffers from step to step and nothing is copied: no slice of a
    stacked state is materialised for a kernel, no result is copied into a stack.

    Args:
        states: state buffer ``(N, B, layout.length, C)`` (:meth:`FlatLayout.to_flat` states):
            ``N = T + 1`` with ``history``, else 2.
        alive: alive-mask buffer ``(T or 1, B, layout.length)`` (0/1 floats), or ``None`` for
            no masking (then ``alive_threshold`` is ``None`` too).
        fire: the rollout's fire masks ``(T, B, layout.length)`` (0/1 floats).
        packed: the MLP's weights, :func:`pack_weights`.
        step: the step's index, an int32 scalar (may be traced).
        count: the rollout's drawn length (may be traced): a step at or past it writes nothing.
        layout: the grid's :class:`FlatLayout`.
        history: the slot policy of :func:`slots`.
        angle: rotation of the Sobel pair (:func:`~nca_lab.perceive.sobel.sobel_kernels`).
        step_size: scale of the MLP's output.
        alive_threshold: alive-mask threshold (>= 0: the zero padding then never counts as
            alive, as the reference's ``-inf`` padding), or ``None`` for no masking.
        interpret: run Pallas' interpreter (CPU) instead of compiling a GPU kernel.
        launch: cells, warps and hidden chunk of the update kernel (default :func:`forward_launch`).

    Returns:
        ``(states, alive)``, the buffers with this step written.
    """
    batch = states.shape[1]
    taps = sobel_taps(angle)
    scalars = step_operands(step, count)
    state_shape = jax.ShapeDtypeStruct(states.shape[1:], states.dtype)
    flag_shape = jax.ShapeDtypeStruct((batch, layout.length), states.dtype)
    in_place = alive_threshold is None
    launch = launch or forward_launch(layout, batch)
    update = pallas_call(
        _update_kernel,
        batch,
        layout,
        launch,
        out_shape=(jax.ShapeDtypeStruct(states.shape, states.dtype),)
        if in_place
        else (state_shape, flag_shape, flag_shape),
        interpret=interpret,
        aliases={2: 0} if in_place else None,
        taps=taps,
        step_size=float(step_size),
        history=history,
        in_place=in_place,
        over_hidden=launch.over_hidden,
    )
    if in_place:
        return update(*scalars, states, fire, packed)[0], None
    new, pre, alpha = update(*scalars, states, fire, packed)
    return pallas_call(
        _alive_kernel,
        batch,
        layout,
        light_launch(layout),
        out_shape=(jax.ShapeDtypeStruct(states.shape, states.dtype), jax.ShapeDtypeStruct(alive.shape, alive.dtype)),
        interpret=interpret,
        aliases={5: 0, 6: 1},
        threshold=float(alive_threshold),
        history=history,
    )(*scalars, new, pre, alpha, states, alive)
