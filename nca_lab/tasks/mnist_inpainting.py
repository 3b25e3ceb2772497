"""Inpainting MNIST digits: the NCA fills in the pixels a random mask hides.

Reference: after Tesfaldet et al., "Attention-based Neural Cellular Automata" (ViTCA), NeurIPS
2022, the MNIST denoising/inpainting experiments: a digit with a random pixel mask and optional
square patches is written into the cells, which must reconstruct the hidden part; a sample pool
(Mordvintsev et al., Distill 2020) keeps the reconstruction stable. The masked digit is written
into the channels the NCA updates; with ``fixed_input=True`` each cell also keeps it in its last
4 channels, which no step changes, as ViTCA keeps its input, and with ``output_init="grey"`` the
updated RGBA starts at opaque mid-grey (RGB 0.5) instead (ViTCA's constant start).

Unlike ViTCA, so its numbers do not compare with ViTCA's:

* the mask: each pixel is hidden on its own (``mask_ratio``), plus ``patches`` squares at any
  position, and a hidden pixel is 0. ViTCA tiles the image into s x s patches and drops each
  with probability p (p in {0.25, 0.5, 0.75}, s growing over training), filling them with
  noise or zeros;
* the model is told which pixels are hidden (alpha 0, below); ViTCA's input carries no such
  indicator, so its model must also find the corrupted pixels: an easier task here;
* the loss is the RGBA MSE of nca_lab's other tasks (ViTCA's: L1 and an overflow term), and
  the metrics are over the hidden pixels only (ViTCA reports PSNR, SSIM and LPIPS of the
  whole image).

Channel layout (premultiplied RGBA, the convention of :mod:`nca_lab.render`): RGB hold the
grey level of a visible pixel (the same value three times), alpha is 1 where the pixel is
visible and 0 where it is hidden (so the NCA can tell a hidden pixel from black background),
hidden channels start at zero. Pictures composite states over red instead of white, so
hidden pixels stand out from the white strokes. The target
is the whole digit with alpha 1 everywhere; the read-out of a final state is the mean of
its RGB, clipped to [0, 1]. The module's functions are jitted, so evaluation (outside the
train step) compiles each of them once.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from nca_lab.data.mnist import load_mnist_images
from nca_lab.errors import require
from nca_lab.nca import NCA, grow
from nca_lab.perceive.stencil import neighbours
from nca_lab.render import rgba, tile, to_rgb, to_uint8
from nca_lab.tasks.base import Batch, Rendering, Task, input_channels, input_of, psnr, rgba_mse, with_input

#: Background colour of pictures: where alpha is 0 (a hidden pixel), it shows through.
HIDDEN_RGB = np.array([0.85, 0.1, 0.1], np.float32)


@partial(jax.jit, static_argnames=("n", "grid_shape", "patches", "patch_size"))
def inpainting_masks(
    key: jax.Array, n: int, grid_shape: tuple[int, int], ratio: float, patches: int = 0, patch_size: int = 8
) -> jax.Array:
    """Boolean ``(n, H, W)``, true where a pixel is hidden.

    Each pixel is hidden with probability ``ratio`` (a Bernoulli mask), and ``patches``
    squares of ``patch_size`` pixels at uniform positions are hidden on top of it.
    """
    h, w = grid_shape
    pixel_key, patch_key = jax.random.split(key)
    hidden = jax.random.bernoulli(pixel_key, ratio, (n, h, w))
    if patches:
        limits = jnp.array([h - patch_size + 1, w - patch_size + 1]).reshape(2, 1, 1, 1, 1)
        top, left = jax.random.randint(patch_key, (2, n, patches, 1, 1), 0, limits)
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        inside = (rows >= top) & (rows < top + patch_size) & (cols >= left) & (cols < left + patch_size)
        hidden = hidden | jnp.any(inside, axis=1)
    return hidden


@partial(jax.jit, static_argnames=("num_channels", "fixed_channels", "output_init"))
def masked_batch(
    images: jax.Array, hidden: jax.Array, num_channels: int, fixed_channels: int = 0, output_init: str = "input"
) -> Batch:
    """States and targets of digits ``images (N, H, W)`` in [0, 1] with ``hidden`` pixels removed.

    Targets are ``(N, H, W, 4)``: the grey level in RGB and alpha 1. States are
    ``(N, H, W, C)``: the target times the visibility (RGB premultiplied, alpha the
    visibility), hidden channels zero but for the last ``fixed_channels`` (4 or 0), which
    hold that RGBA again, kept (:func:`~nca_lab.tasks.base.with_input`, as is ``output_init``).
    """
    grey = images[..., None]
    target = jnp.concatenate([grey, grey, grey, jnp.ones_like(grey)], axis=-1)
    visible = jnp.logical_not(hidden)[..., None].astype(target.dtype)
    hidden_channels = jnp.zeros((*images.shape, num_channels - 4), target.dtype)
    state = jnp.concatenate([target * visible, hidden_channels], axis=-1)
    return Batch(with_input(state, fixed_channels, output_init), target)


@jax.jit
def neighbour_fill(images: jax.Array, hidden: jax.Array) -> jax.Array:
    """The baseline: each hidden pixel becomes the mean of its visible 3x3 neighbours (0 if none)."""
    visible = jnp.logical_not(hidden)[..., None].astype(images.dtype)
    total = sum(value for _, value in neighbours(images[..., None] * visible))
    count = sum(seen for _, seen in neighbours(visible))
    fill = jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)[..., 0]
    return jnp.where(hidden, fill, images)


@jax.jit
def masked_mse(prediction: jax.Array, images: jax.Array, hidden: jax.Array) -> jax.Array:
    """Mean squared error over the hidden pixels only (all samples pooled)."""
    weight = hidden.astype(images.dtype)
    return jnp.sum(jnp.square(prediction - images) * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@jax.jit
def read_out(state: jax.Array) -> jax.Array:
    """The digit ``(..., H, W)`` a state shows: the mean of its RGB, clipped to [0, 1]."""
    return jnp.clip(jnp.mean(state[..., :3], axis=-1), 0.0, 1.0)


class MnistInpaintingTask(Task):
    """Fill in the hidden pixels of MNIST digits; trained on the train split, evaluated on test."""

    alive_threshold = None
    free_on_resume = ("data_root", "download", "eval_samples")
    added_later = {"fixed_input": False, "output_init": "input"}

    def __init__(
        self,
        num_channels: int,
        *,
        data_root: str = "data",
        download: bool = False,
        mask_ratio: float = 0.5,
        patches: int = 0,
        patch_size: int = 8,
        pool_size: int = 1024,
        eval_samples: int = 256,
        fixed_input: bool = False,
        output_init: str = "input",
        render_scale: int = 4,
    ):
        """Check the settings, then load both splits into host memory.

        Args:
            num_channels: state channels (at least 4: RGBA).
            data_root: directory holding ``MNIST/raw/`` (torchvision's layout).
            download: download MNIST with torchvision if it is missing (needs torchvision).
            mask_ratio: probability in [0, 1) that a pixel is hidden.
            patches: square patches hidden on top of the pixel mask.
            patch_size: side of each patch in pixels.
            pool_size: states in the sample pool (0: every batch starts fresh).
            eval_samples: test digits evaluated (at most the test split's size).
            fixed_input: keep the masked digit in the last 4 channels too, unchanged by every
                step (ViTCA's input channels; needs ``num_channels >= 8``).
            output_init: with ``fixed_input``, what the RGBA starts at: ``"input"`` (the
                masked digit) or ``"grey"`` (opaque, RGB 0.5: ViTCA's constant start).
            render_scale: pixels per cell in the rendered pictures.
        """
        super().__init__(num_channels, render_scale)
        self.fixed_channels = input_channels(fixed_input, num_channels, output_init)
        self.output_init = output_init
        require(0.0 <= mask_ratio < 1.0, f"task.mask_ratio must be in [0, 1), got {mask_ratio}")
        require(int(patches) >= 0, f"task.patches must be non-negative, got {patches}")
        require(mask_ratio > 0.0 or int(patches) > 0, "nothing to inpaint: set task.mask_ratio > 0 or task.patches > 0")
        require(int(pool_size) >= 0, f"task.pool_size must be non-negative, got {pool_size}")
        require(int(eval_samples) > 0, f"task.eval_samples must be positive, got {eval_samples}")
        train = load_mnist_images(data_root, "train", download=bool(download))
        test = load_mnist_images(data_root, "test", download=bool(download))
        require(
            train.shape[1:] == test.shape[1:],
            f"MNIST train and test images differ in size: {train.shape[1:]} and {test.shape[1:]}",
        )
        require(
            0 < int(patch_size) <= min(train.shape[1:]),
            f"task.patch_size must be in [1, {min(train.shape[1:])}], got {patch_size}",
        )
        self.grid_shape = tuple(train.shape[1:])
        self.mask_ratio = float(mask_ratio)
        self.patches = int(patches)
        self.patch_size = int(patch_size)
        self.pool_size = int(pool_size)
        self.eval_samples = min(int(eval_samples), test.shape[0])
        self._train = train
        self._test = test

    def _gather_train(self, idx: np.ndarray) -> np.ndarray:
        return self._train[np.asarray(idx)]

    def masks(self, key: jax.Array, n: int) -> jax.Array:
        """Hidden-pixel masks ``(n, H, W)`` with this task's ratio and patches."""
        return inpainting_masks(key, n, self.grid_shape, self.mask_ratio, self.patches, self.patch_size)

    def sample(self, key: jax.Array, n: int) -> Batch:
        """``n`` random training digits, masked.

        The digits are gathered on the host by a ``pure_callback``: closing over the 47 MB
        train split instead would embed it as a constant in every compiled train step
        (measured with jax 0.10: ~94 MB of HLO text and seconds more per compile).
        """
        digit_key, mask_key = jax.random.split(key)
        idx = jax.random.randint(digit_key, (n,), 0, self._train.shape[0])
        shape = jax.ShapeDtypeStruct((n, *self.grid_shape), jnp.uint8)
        images = jax.pure_callback(self._gather_train, shape, idx, vmap_method="expand_dims")  # any shape of idx
        images = images.astype(jnp.float32) / 255.0
        return masked_batch(images, self.masks(mask_key, n), self.num_channels, self.fixed_channels, self.output_init)

    def loss(self, state: jax.Array, target: jax.Array) -> jax.Array:
        """RGBA mean squared error per sample, over all pixels (visible ones must stay put)."""
        return rgba_mse(state, target)

    def _test_batch(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array, Batch]:
        """The first ``n`` test digits (a fixed evaluation set), masks drawn with ``key``, their batch."""
        images = jnp.asarray(self._test[:n], jnp.float32) / 255.0
        hidden = self.masks(key, n)
        return images, hidden, masked_batch(images, hidden, self.num_channels, self.fixed_channels, self.output_init)

    def evaluate(self, model: NCA, key: jax.Array, horizon: int) -> dict[str, float]:
        """MSE and PSNR on the hidden pixels of the first ``eval_samples`` test digits, against two baselines.

        ``mse``/``psnr``: the NCA after ``horizon`` steps (read out by :func:`read_out`);
        ``*_masked_input``: the masked input as is (hidden pixels 0); ``*_neighbour_fill``:
        hidden pixels set to the mean of their visible neighbours. PSNR (data range 1) is
        computed from the MSE over all hidden pixels of all evaluated digits.
        """
        batch_key, rollout_key = jax.random.split(key)
        images, hidden, batch = self._test_batch(batch_key, self.eval_samples)
        final, _ = grow(model, batch.state, jax.random.split(rollout_key, self.eval_samples), horizon)
        predictions = {
            "": read_out(final),
            "_masked_input": read_out(input_of(batch.state, self.fixed_channels)),
            "_neighbour_fill": neighbour_fill(images, hidden),
        }
        metrics = {}
        for suffix, prediction in predictions.items():
            mse = float(masked_mse(prediction, images, hidden))
            metrics[f"mse{suffix}"] = mse
            metrics[f"psnr{suffix}"] = psnr(mse)
        return metrics

    def render(self, model: NCA, key: jax.Array, horizon: int, n: int = 8) -> Rendering:
        """GIF: the first ``n`` test digits side by side being filled in for twice the horizon.

        Final picture: rows masked input (hidden pixels red), NCA output after ``horizon``
        steps, and the clean digit.
        """
        n = min(n, self._test.shape[0])
        batch_key, rollout_key = jax.random.split(key)
        _, _, batch = self._test_batch(batch_key, n)
        keys = jax.random.split(rollout_key, n)
        _, frames = grow(model, batch.state, keys, 2 * horizon, frame_every=1, frame_fn=rgba)
        scale = self.render_scale
        frames = to_uint8(to_rgb(frames, HIDDEN_RGB), scale)
        target = to_uint8(to_rgb(batch.target, HIDDEN_RGB), scale)
        # the inputs: frame 0, unless it starts grey
        inputs = to_uint8(to_rgb(input_of(batch.state, self.fixed_channels), HIDDEN_RGB), scale)
        gif = np.stack([tile(list(f)) for f in frames])
        return Rendering(frames=gif, final=tile([*inputs, *frames[horizon], *target], columns=n))
