"""Augmentation and normalisation, written once in JAX and applied inside the jitted train and eval steps of both
pipelines: the host pipeline hands the steps raw images with each example's stream position, the device
pipeline gathers them from its arrays; either way ``augment_batch`` draws each example's flip, crop and erasing
from a key of (the run's data key, position), so a batch is a pure function of the run's seed and step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax.data import DatasetSpec

ERASE_AREA = (0.02, 0.4)  # random erasing: fraction of the image, and aspect ratio (log-uniform), of Zhong et al.
ERASE_ASPECT = (0.3, 1 / 0.3)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How images become model inputs: normalisation, and for training the augmentations of ``config.data``."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  flip: bool = False
  crop_padding: int = 0  # 0: no pad-and-crop
  random_erasing: float = 0.0  # probability

  def normalize(self, images: jax.Array) -> jax.Array:
    """uint8 [..., C] -> float32 (x / 255 - mean) / std."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def augment(self, image: jax.Array, key: jax.Array) -> jax.Array:
    """One uint8 image [H, W, C] -> its augmented, normalised float32 version (flip, pad-and-crop, erasing)."""
    k_flip, k_crop, k_erase = jax.random.split(key, 3)
    x = image.astype(jnp.float32) / 255.0
    if self.flip:
      x = jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)
    if self.crop_padding:
      x = pad_and_crop(x, self.crop_padding, k_crop)
    x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    if self.random_erasing:
      x = random_erasing(x, self.random_erasing, k_erase)
    return x


def pad_and_crop(image: jax.Array, pad: int, key: jax.Array) -> jax.Array:
  """Pads [H, W, C] by ``pad`` on each side (reflecting the edge) and takes an H x W window at an offset drawn
  uniformly from [0, 2 * pad] on each axis."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def random_erasing(image: jax.Array, probability: float, key: jax.Array) -> jax.Array:
  """With ``probability``, zeroes one rectangle of ``image`` [H, W, C] (normalised, so zero is the dataset mean):
  area a fraction of the image uniform in ERASE_AREA, aspect ratio log-uniform in ERASE_ASPECT, clipped to the
  image; position uniform where it fits (Zhong et al. 2020)."""
  height, width = image.shape[0], image.shape[1]
  u = jax.random.uniform(key, (5,))
  area = (ERASE_AREA[0] + u[0] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
  log_lo, log_hi = np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1])
  aspect = jnp.exp(log_lo + u[1] * (log_hi - log_lo))
  h = jnp.clip(jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32), 1, height)
  w = jnp.clip(jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32), 1, width)
  top = (u[2] * (height - h + 1)).astype(jnp.int32)
  left = (u[3] * (width - w + 1)).astype(jnp.int32)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  return jnp.where((inside & (u[4] < probability))[:, :, None], 0.0, image)


def augment_batch(images: jax.Array, positions: jax.Array, key: jax.Array, preprocess: Preprocess) -> jax.Array:
  """Raw images [b, H, W, C] (uint8, or float32 on the 0-255 scale) -> augmented, normalised float32, example i
  drawing from ``fold_in(key, positions[i])``."""
  keys = jax.vmap(lambda q: jax.random.fold_in(key, q))(positions)
  return jax.vmap(preprocess.augment)(images, keys)


def preprocessing(data_config: ml_collections.ConfigDict, spec: DatasetSpec) -> tuple[Preprocess, Preprocess]:
  """(evaluation's normalisation, training's augmentation) of ``config.data`` for a dataset of ``spec``."""
  normalize = Preprocess(spec.mean, spec.std)
  d = data_config
  return normalize, dataclasses.replace(normalize, flip=d.augment_flip, crop_padding=d.crop_padding * d.augment_crop,
                                        random_erasing=d.random_erasing)
