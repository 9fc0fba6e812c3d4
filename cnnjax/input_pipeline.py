"""tf.data input pipelines from TFDS: per-process split, shuffle, augment, batch as [devices, batch, H, W, C].

Training order is a pure function of (config.seed, step): the stream is repeat -> shuffle(seed) -> enumerate,
augmentation draws its randomness from (seed, element index) with stateless ops, and resuming at step s
skips the first s batches, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cnnjax import datasets

tf.config.set_visible_devices([], 'GPU')  # tf.data only: leave every accelerator to JAX

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know of a TFDS dataset."""
  image_size: int  # native side; 0 = images vary in size and are resized to config.data.image_size
  channels: int
  train_split: str
  eval_split: str
  mean: tuple[float, ...]  # per-channel statistics of pixel values in [0, 1]
  std: tuple[float, ...]
  offline: bool = False  # True: generated or shipped with a package, no download


DATASETS: dict[str, DatasetSpec] = {
    'shapes': DatasetSpec(32, 3, 'train', 'test', (0.5,) * 3, (0.29,) * 3, offline=True),
    'digits': DatasetSpec(8, 1, 'train', 'test', (0.305,), (0.375,), offline=True),
    'mnist': DatasetSpec(28, 1, 'train', 'test', (0.1307,), (0.3081,)),
    'fashion_mnist': DatasetSpec(28, 1, 'train', 'test', (0.2860,), (0.3530,)),
    'cifar10': DatasetSpec(32, 3, 'train', 'test', (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cats_vs_dogs': DatasetSpec(0, 3, 'train[:80%]', 'train[80%:]', (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Shapes and sizes the model and the loop need."""
  image_shape: tuple[int, int, int]
  num_outputs: int


def get_spec(name: str) -> DatasetSpec:
  """The DatasetSpec of ``--config.data.name``."""
  if name not in DATASETS:
    raise ValueError(f'--config.data.name={name!r} is unknown; choose one of {sorted(DATASETS)}')
  return DATASETS[name]


def image_size(data_config: ml_collections.ConfigDict) -> int:
  """The side of the images the model sees: config.data.image_size, or the dataset's own when it is 0."""
  spec = get_spec(data_config.name)
  size = data_config.image_size or spec.image_size or 224
  if data_config.name == 'shapes' and not datasets.shapes.MIN_SIZE <= size <= datasets.shapes.MAX_SIZE:
    raise ValueError(f'--config.data.image_size={size}: shapes are generated at sizes '
                     f'{datasets.shapes.MIN_SIZE}..{datasets.shapes.MAX_SIZE}')
  if spec.image_size and data_config.name != 'shapes' and size != spec.image_size:
    raise ValueError(f'--config.data.image_size={size}: {data_config.name} images are {spec.image_size}x'
                     f'{spec.image_size}; set --config.data.image_size={spec.image_size} (or 0 for native)')
  return size


def get_builder(data_config: ml_collections.ConfigDict, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``config.data`` (for `shapes`, the config of the requested image size)."""
  config = None
  if data_config.name == 'shapes':
    size = image_size(data_config)
    config = str(size) if str(size) in datasets.Shapes.builder_configs else datasets.shapes.shapes_config(size)
  return tfds.builder(data_config.name, config=config, data_dir=data_dir)


def _target(data_config: ml_collections.ConfigDict, head: str, num_classes: int) -> Callable[[dict], tf.Tensor]:
  """Maps an example to the target of the task: class, binary label or regression value(s)."""
  if head == 'multiclass':
    return lambda ex: tf.cast(ex['label'], tf.int32)
  if head == 'binary':
    if num_classes == 2:
      return lambda ex: tf.cast(ex['label'], tf.float32)
    return lambda ex: tf.cast(tf.equal(ex['label'], data_config.positive_class), tf.float32)
  key = data_config.regression_target
  return lambda ex: tf.reshape(tf.cast(ex[key], tf.float32), [-1])


def validate_data_config(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> None:
  """Raises a ValueError naming the flag for a task the dataset cannot provide."""
  features = builder.info.features
  if config.head == 'regression' and config.data.regression_target not in features:
    raise ValueError(f'--config.data.regression_target={config.data.regression_target!r} is not a feature of '
                     f'{config.data.name}; choose one of {sorted(features.keys())}')
  num_classes = features['label'].num_classes
  if config.head == 'binary' and num_classes > 2 and not 0 <= config.data.positive_class < num_classes:
    raise ValueError(f'--config.data.positive_class={config.data.positive_class} must be in [0, {num_classes})')


def data_info(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> DataInfo:
  """Image shape and number of model outputs for ``config``."""
  features = builder.info.features
  if config.head == 'multiclass':
    num_outputs = features['label'].num_classes
  elif config.head == 'binary':
    num_outputs = 1
  else:
    num_outputs = int(np.prod(features[config.data.regression_target].shape, dtype=int))
  spec = get_spec(config.data.name)
  size = image_size(config.data)
  return DataInfo((size, size, spec.channels), num_outputs)


def _preprocess(config: ml_collections.ConfigDict, spec: DatasetSpec, train: bool
                ) -> Callable[[tf.Tensor, dict], dict]:
  """(index, example) -> {'image': normalised float32, 'target'}; augmentation is keyed by (seed, index)."""
  size = image_size(config.data)
  mean, std = tf.constant(spec.mean), tf.constant(spec.std)

  def fn(index: tf.Tensor, ex: dict) -> dict:
    image = tf.cast(ex['image'], tf.float32) / 255.0
    if spec.image_size == 0:
      image = tf.image.resize(image, (size, size), antialias=True)
    if train and (config.data.augment_flip or config.data.augment_crop):
      seed = tf.stack([tf.constant(config.seed, tf.int64), tf.cast(index, tf.int64)])
      if config.data.augment_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed)
      if config.data.augment_crop:
        pad = config.data.crop_padding
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode='REFLECT')
        image = tf.image.stateless_random_crop(image, (size, size, spec.channels), seed + 1)
    return {'image': (image - mean) / std, 'target': ex['target']}

  return fn


Shard = tuple[int, int]  # (this process's index, number of processes)


def process_shard() -> Shard:
  return jax.process_index(), jax.process_count()


def _source(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, split: str,
            drop_remainder: bool, shard: Shard) -> tf.data.Dataset:
  """Shard ``shard`` of ``split`` (as tfds.split_for_jax_process cuts it) as {'image', 'target'}, cached."""
  target = _target(config.data, config.head, builder.info.features['label'].num_classes)
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


def train_iterator(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, num_devices: int,
                   start_step: int = 0, shard: Shard | None = None) -> Iterator[Batch]:
  """Endless training batches {'image': [D, B, H, W, C], 'target': [D, B, ...]}, starting at ``start_step``.

  Args:
    config: the experiment config (uses seed, batch_size and data.*).
    builder: the prepared TFDS builder.
    num_devices: local devices, the leading batch axis.
    start_step: batches to skip, for resuming a run exactly where it stopped.
    shard: (process index, process count) whose share of the data and of the global batch to produce;
      default this process's.

  Returns:
    An iterator of numpy batches.
  """
  spec = get_spec(config.data.name)
  shard = shard or process_shard()
  batch = config.batch_size // shard[1]
  ds = _source(config, builder, spec.train_split, drop_remainder=True, shard=shard)
  ds = ds.repeat().shuffle(config.data.shuffle_buffer, seed=config.seed).enumerate().skip(start_step * batch)
  ds = ds.map(_preprocess(config, spec, train=True), num_parallel_calls=tf.data.AUTOTUNE)
  ds = _device_batches(ds.batch(batch, drop_remainder=True), num_devices)
  return iter(tfds.as_numpy(ds.prefetch(config.data.prefetch).with_options(_options())))


def eval_batches(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, num_devices: int
                 ) -> Iterable[Batch]:
  """The eval split in batches of config.eval_batch_size, padded, with a 'mask' of real examples.

  Returns:
    A re-iterable of numpy batches {'image', 'target', 'mask'}, each shaped [D, B, ...]; every pass is one
    epoch and reuses the in-memory cache. With several processes every process yields the same number of
    batches (all-padding ones at the end where its share is smaller), as the collectives need.
  """
  spec = get_spec(config.data.name)
  index, count = process_shard()
  batch = config.eval_batch_size // count
  ds = _source(config, builder, spec.eval_split, drop_remainder=False, shard=(index, count)).enumerate()
  ds = ds.map(_preprocess(config, spec, train=False), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda ex: {**ex, 'mask': tf.constant(True)})
  ds = ds.padded_batch(batch).map(lambda b: _pad_to(b, batch))
  if count > 1:
    largest_share = -(-builder.info.splits[spec.eval_split].num_examples // count)
    empty = ds.take(1).map(lambda b: tf.nest.map_structure(tf.zeros_like, b)).repeat()  # mask all False
    ds = ds.concatenate(empty).take(-(-largest_share // batch))
  return tfds.as_numpy(_device_batches(ds, num_devices).prefetch(config.data.prefetch).with_options(_options()))


def _pad_to(batch: dict, size: int) -> dict:
  """Pads a (last, short) batch with zeros up to ``size``; padded rows have mask False."""
  def pad(x):
    return tf.pad(x, [[0, size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1))
  return tf.nest.map_structure(pad, batch)
