"""tf.data input pipelines from TFDS: per-process split, shuffle and batch as [devices, batch, H, W, C]; the host
half of ``pipelines.HostPipeline``.

Examples become {'image', 'target'} and training examples also their 'position' in the stream; ``target`` (from
the task head, ``heads.Head.target``) maps an example to the target, so the pipeline knows nothing of tasks.
Images stay raw (uint8, or float32 on the 0-255 scale where a dataset of varying sizes is resized): the jitted
step normalises and augments them (``augment``), keyed by position, as the device pipeline's steps do.

Training order is a pure function of (config.seed, step): the stream is repeat -> shuffle(seed) -> enumerate,
and resuming at step s skips the first s batches, so a resumed run sees exactly the batches an uninterrupted one
would. Process p of P numbers its n-th example n * P + p, so that no two processes draw the same augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cnnjax import data

tf.config.set_visible_devices([], 'GPU')  # tf.data only: leave every accelerator to JAX

Batch = dict[str, np.ndarray]


Target = Callable[[dict], tf.Tensor]


def _resize(config: ml_collections.ConfigDict, spec: data.DatasetSpec) -> Callable[[dict], dict]:
  """example -> the example with its image resized to the run's size, float32 on the 0-255 scale (for a dataset
  of varying sizes; others keep their stored uint8 images)."""
  size = data.image_size(config.data)
  return lambda ex: {**ex, 'image': tf.image.resize(tf.cast(ex['image'], tf.float32), (size, size), antialias=True)}


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


def _positions(i: tf.Tensor, batch: int, shard: Shard) -> tf.Tensor:
  """The stream positions (uint32, modulo 2**32) of this process's ``i``-th batch of ``batch`` examples: its n-th
  example overall is n * processes + process."""
  n = i * batch + tf.range(batch, dtype=tf.int64)
  return tf.cast(tf.math.floormod(n * shard[1] + shard[0], 2**32), tf.uint32)


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
  """Endless training batches {'image': [D, B, H, W, C], 'target': [D, B, ...], 'position': uint32 [D, B]},
  starting at ``start_step``.

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
  ds = ds.repeat().shuffle(config.data.shuffle_buffer, seed=config.seed).skip(start_step * batch)
  if spec.image_size == 0:
    ds = ds.map(_resize(config, spec), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True).enumerate(start_step)
  ds = ds.map(lambda i, b: {**b, 'position': _positions(i, batch, shard)}, num_parallel_calls=tf.data.AUTOTUNE)
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
  ds = _source(config, builder, target, split, drop_remainder=False, shard=(index, count))
  if spec.image_size == 0:
    ds = ds.map(_resize(config, spec), num_parallel_calls=tf.data.AUTOTUNE)
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
