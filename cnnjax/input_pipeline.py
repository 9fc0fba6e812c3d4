"""tf.data input pipelines from TFDS: per-process split, shuffle, augment, batch as [devices, batch, H, W, C].

Examples become {'image', 'target'}; ``target`` (from the task head, ``heads.Head.target``) maps an example
to the target, so the pipeline itself knows nothing of tasks.

Training order is a pure function of (config.seed, step): the stream is repeat -> shuffle(seed) -> enumerate,
augmentation draws its randomness from (seed, element index) with stateless ops, and resuming at step s
skips the first s batches, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cnnjax import data
from cnnjax.device_pipeline import ERASE_AREA, ERASE_ASPECT

tf.config.set_visible_devices([], 'GPU')  # tf.data only: leave every accelerator to JAX

Batch = dict[str, np.ndarray]


Target = Callable[[dict], tf.Tensor]


def _preprocess(config: ml_collections.ConfigDict, spec: data.DatasetSpec, train: bool
                ) -> Callable[[tf.Tensor, dict], dict]:
  """(index, example) -> {'image': normalised float32, 'target'}; augmentation is keyed by (seed, index). Without
  per-example work (``_per_example``) the same function maps whole batches."""
  size = data.image_size(config.data)
  mean, std = tf.constant(spec.mean), tf.constant(spec.std)

  def fn(index: tf.Tensor, ex: dict) -> dict:
    image = tf.cast(ex['image'], tf.float32) / 255.0
    if spec.image_size == 0:
      image = tf.image.resize(image, (size, size), antialias=True)
    if not _per_example(config, spec, train):  # whole batches: the element-wise ops alone
      return {'image': (image - mean) / std, 'target': ex['target']}
    seed = tf.stack([tf.constant(config.seed, tf.int64), tf.cast(index, tf.int64)])
    if train and config.data.augment_flip:
      image = tf.image.stateless_random_flip_left_right(image, seed)
    if train and config.data.augment_crop:
      pad = config.data.crop_padding
      image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode='REFLECT')
      image = tf.image.stateless_random_crop(image, (size, size, spec.channels), seed + 1)
    image = (image - mean) / std
    if train and config.data.random_erasing:
      image = random_erasing(image, config.data.random_erasing, seed + 2)
    return {'image': image, 'target': ex['target']}

  return fn


def _per_example(config: ml_collections.ConfigDict, spec: data.DatasetSpec, train: bool) -> bool:
  """Whether preprocessing must run example by example: augmentation keyed by each example's index, or resizing
  images of varying sizes. Otherwise the pipeline batches first and normalises whole batches: the same
  element-wise ops on the same values, at a fraction of tf.data's per-element CPU cost (docs/performance.md)."""
  d = config.data
  return (train and bool(d.augment_flip or d.augment_crop or d.random_erasing)) or spec.image_size == 0




def random_erasing(image: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
  """With ``probability``, zeroes one random rectangle of ``image`` [H, W, C] (normalised, so zero is the
  dataset mean): area a fraction of the image uniform in ERASE_AREA, aspect ratio log-uniform in ERASE_ASPECT,
  clipped to the image; position uniform where it fits. Stateless: the rectangle is a function of ``seed``."""
  height, width = image.shape[0], image.shape[1]
  u = tf.random.stateless_uniform([5], seed, dtype=tf.float32)
  area = (ERASE_AREA[0] + u[0] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
  log_lo, log_hi = np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1])
  aspect = tf.exp(log_lo + u[1] * (log_hi - log_lo))
  h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, height)
  w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, width)
  top = tf.cast(u[2] * tf.cast(height - h + 1, tf.float32), tf.int32)
  left = tf.cast(u[3] * tf.cast(width - w + 1, tf.float32), tf.int32)
  rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  erase = inside & (u[4] < probability)
  return tf.where(erase[:, :, None], tf.zeros_like(image), image)


Shard = tuple[int, int]  # (this process's index, number of processes)


def process_shard() -> Shard:
  return jax.process_index(), jax.process_count()


def _source(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, target: Target, split: str,
            drop_remainder: bool, shard: Shard) -> tf.data.Dataset:
  """Shard ``shard`` of ``split`` (as tfds.split_for_jax_process cuts it) as {'image', 'target'}, cached."""
  index, count = shard
  process_split = tfds.even_splits(split, n=count, drop_remainder=drop_remainder)[index] if count > 1 else split
  ds = builder.as_dataset(split=process_split, shuffle_files=False,
                          read_config=tfds.ReadConfig(add_tfds_id=False))
  ds = ds.map(lambda ex: {'image': ex['image'], 'target': target(ex)}, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.cache() if config.data.cache else ds


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 0  # share tf's pool
  return options


def _device_batches(ds: tf.data.Dataset, num_devices: int) -> tf.data.Dataset:
  """Reshapes [B, ...] batches to [num_devices, B // num_devices, ...]."""
  return ds.map(lambda b: tf.nest.map_structure(lambda x: tf.reshape(x, [num_devices, -1, *x.shape[1:]]), b))


def train_iterator(config: ml_collections.ConfigDict, spec: data.DatasetSpec, builder: tfds.core.DatasetBuilder,
                   target: Target, num_devices: int, start_step: int = 0, shard: Shard | None = None
                   ) -> Iterator[Batch]:
  """Endless training batches {'image': [D, B, H, W, C], 'target': [D, B, ...]}, starting at ``start_step``.

  Args:
    config: the experiment config (uses seed, batch_size and data.*).
    spec: the dataset's spec (``data.get_spec(config.data.name)``, resolved by ``train.setup``).
    builder: the prepared TFDS builder.
    target: example -> target (the task head's).
    num_devices: local devices, the leading batch axis.
    start_step: batches to skip, for resuming a run exactly where it stopped.
    shard: (process index, process count) whose share of the data and of the global batch to produce;
      default this process's.

  Returns:
    An iterator of numpy batches.
  """
  shard = shard or process_shard()
  batch = config.batch_size // shard[1]
  ds = _source(config, builder, target, data.splits(config.data, builder).train, drop_remainder=True, shard=shard)
  ds = ds.repeat().shuffle(config.data.shuffle_buffer, seed=config.seed).enumerate().skip(start_step * batch)
  preprocess = _preprocess(config, spec, train=True)
  if _per_example(config, spec, train=True):
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
  else:
    ds = ds.batch(batch, drop_remainder=True).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _device_batches(ds, num_devices)
  return iter(tfds.as_numpy(ds.prefetch(config.data.prefetch).with_options(_options())))


def eval_batches(config: ml_collections.ConfigDict, spec: data.DatasetSpec, builder: tfds.core.DatasetBuilder,
                 target: Target, num_devices: int, split: str) -> Iterable[Batch]:
  """The TFDS split ``split`` (validation or test) in batches of config.eval_batch_size, padded, with a 'mask'
  of real examples.

  Returns:
    A re-iterable of numpy batches {'image', 'target', 'mask'}, each shaped [D, B, ...]; every pass is one
    epoch and reuses the in-memory cache. With several processes every process yields the same number of
    batches (all-padding ones at the end where its share is smaller), as the collectives need.
  """
  index, count = process_shard()
  batch = config.eval_batch_size // count
  ds = _source(config, builder, target, split, drop_remainder=False, shard=(index, count)).enumerate()
  ds = ds.map(_preprocess(config, spec, train=False), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda ex: {**ex, 'mask': tf.constant(True)})
  ds = ds.padded_batch(batch).map(lambda b: _pad_to(b, batch))
  if count > 1:
    largest_share = -(-builder.info.splits[split].num_examples // count)
    empty = ds.take(1).map(lambda b: tf.nest.map_structure(tf.zeros_like, b)).repeat()  # mask all False
    ds = ds.concatenate(empty).take(-(-largest_share // batch))
  return tfds.as_numpy(_device_batches(ds, num_devices).prefetch(config.data.prefetch).with_options(_options()))


def _pad_to(batch: dict, size: int) -> dict:
  """Pads a (last, short) batch with zeros up to ``size``; padded rows have mask False."""
  def pad(x):
    return tf.pad(x, [[0, size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1))
  return tf.nest.map_structure(pad, batch)
