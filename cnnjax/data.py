"""Datasets: what cnnjax knows of each TFDS dataset, the image shape a config asks for, and preparing the
data once per data_dir (generating offline datasets, downloading the others with a time limit, and making
every process of a multi-host run wait for process 0).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from cnnjax import datasets
from cnnjax.config import ConfigError, check_choice

RESIZE_DEFAULT = 224  # side that datasets of varying image sizes are resized to when image_size is 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know of a TFDS dataset.

  Attributes:
    image_size: native side; 0 = images vary in size and are resized to config.data.image_size.
    channels: image channels.
    train_split, eval_split: TFDS split names.
    mean, std: per-channel statistics of pixel values in [0, 1].
    offline: True: generated or shipped with a package, no download.
    sizes: (min, max) sides the dataset can be generated at; None: only its own.
    builder_config: the TFDS builder config for a generated side (datasets with ``sizes``).
  """
  image_size: int
  channels: int
  train_split: str
  eval_split: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  offline: bool = False
  sizes: tuple[int, int] | None = None
  builder_config: Callable[[int], Any] | None = None


DATASETS: dict[str, DatasetSpec] = {
    'shapes': DatasetSpec(32, 3, 'train', 'test', (0.5,) * 3, (0.29,) * 3, offline=True,
                          sizes=(datasets.shapes.MIN_SIZE, datasets.shapes.MAX_SIZE),
                          builder_config=datasets.shapes.builder_config),
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
  check_choice('data.name', name, DATASETS)
  return DATASETS[name]


def image_size(data_config: ml_collections.ConfigDict) -> int:
  """The side of the images the model sees: config.data.image_size, or the dataset's own when it is 0."""
  spec = get_spec(data_config.name)
  size = data_config.image_size or spec.image_size or RESIZE_DEFAULT
  if spec.sizes and not spec.sizes[0] <= size <= spec.sizes[1]:
    raise ConfigError(f'--config.data.image_size={size}: {data_config.name} are generated at sizes '
                      f'{spec.sizes[0]}..{spec.sizes[1]}')
  if not spec.sizes and spec.image_size and size != spec.image_size:
    raise ConfigError(f'--config.data.image_size={size}: {data_config.name} images are {spec.image_size}x'
                      f'{spec.image_size}; set --config.data.image_size={spec.image_size} (or 0 for native)')
  return size


def image_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the model sees."""
  size = image_size(data_config)
  return size, size, get_spec(data_config.name).channels


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``--config.data.*`` flag for an unknown dataset or image size (pure)."""
  image_shape(data_config)


def get_builder(data_config: ml_collections.ConfigDict, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``config.data`` (its features and splits are known before it is prepared)."""
  spec = get_spec(data_config.name)
  config = spec.builder_config(image_size(data_config)) if spec.builder_config else None
  return tfds.builder(data_config.name, config=config, data_dir=data_dir)


def prepare(data_config: ml_collections.ConfigDict, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of ``config.data``, prepared in ``data_dir`` (offline datasets are generated on first use).

  In a multi-host run process 0 prepares while the others wait; a host that still sees no data then (no
  shared filesystem) prepares its own copy, which is the same data: the builders are deterministic.

  Raises:
    ConfigError for a data_dir that is not a usable directory, or a download that does not finish within
    config.data.download_timeout_s (no internet), with advice.
  """
  if data_dir and (os.path.exists(data_dir) and not os.path.isdir(data_dir)
                   or os.path.isdir(data_dir) and not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK)):
    raise ConfigError(f'--data_dir={data_dir} is not a readable and writable directory; point it at one')
  builder = get_builder(data_config, data_dir)
  if jax.process_index() == 0 and not builder.is_prepared():
    _download_and_prepare(builder, data_config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('cnnjax: data prepared by process 0')
    builder = get_builder(data_config, data_dir)
    if not builder.is_prepared():
      _download_and_prepare(builder, data_config)
  return builder


def _download_and_prepare(builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict) -> None:
  """Runs builder.download_and_prepare(), giving up after config.data.download_timeout_s for downloads.

  tfds retries a failing download for a long time; offline, that is a hang. The download runs in a daemon
  thread so that a timeout can end the run with advice instead.
  """
  if get_spec(data_config.name).offline:
    builder.download_and_prepare()  # generated locally: no network, no timeout
    return
  errors: list[BaseException] = []

  def target():
    try:
      builder.download_and_prepare()
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
      errors.append(e)

  thread = threading.Thread(target=target, daemon=True, name='tfds-download')
  thread.start()
  thread.join(data_config.download_timeout_s)
  if thread.is_alive():
    name = data_config.name
    raise ConfigError(
        f'--config.data.name={name} is not in --data_dir={builder.data_dir_root} and downloading it did not finish '
        f'in {data_config.download_timeout_s} s (no internet?). Download it once on a machine with internet into '
        'that --data_dir (python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare()\"), raise "
        '--config.data.download_timeout_s, or use an offline dataset: --config.data.name=shapes or digits')
  if errors:
    raise errors[0]
