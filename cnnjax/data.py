"""Datasets: what cnnjax knows of each TFDS dataset, the image shape a config asks for, the train / validation /
test splits, and preparing the data once per data_dir (generating offline datasets, reading the MNIST family
from local IDX files, downloading the others with a time limit, and making every process of a multi-host run
wait for process 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from cnnjax import files
from cnnjax.config import check_bool, check_choice, check_int, check_number, check_str, lookup
from cnnjax.errors import ConfigError, DataError, DownloadTimeout

if TYPE_CHECKING:  # TensorFlow Datasets is imported only where TFDS data is prepared or read
  import tensorflow_datasets as tfds

RESIZE_DEFAULT = 224  # side that datasets of varying image sizes are resized to when image_size is 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know of a TFDS dataset.

  Attributes:
    image_size: native side; 0 = images vary in size and are resized to config.data.image_size.
    channels: image channels.
    mean, std: per-channel statistics of pixel values in [0, 1] (a ``source``'s are measured when it is prepared).
    offline: True: generated or shipped with a package, no download.
    sizes: (min, max) sides the dataset can be generated at; None: only its own.
    builder_config: the TFDS builder config for a generated side (datasets with ``sizes``).
    idx: TFDS's builder reads the four original IDX files, so it can be prepared from a local directory of
      them (``--config.data.source_dir``).
    source_dir: the default of ``--config.data.source_dir`` ('' = none).
    install_hint: how to get the IDX files into ``source_dir`` on this kind of machine.
    source: 'folder', 'npz' or 'tfds' for data whose images are decoded and fitted when they are prepared
      (``sources``), its statistics measured; '' for a built-in dataset that TFDS's arrays hold as they are.
  """
  image_size: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  offline: bool = False
  sizes: tuple[int, int] | None = None
  builder_config: Callable[[int], Any] | None = None
  idx: bool = False
  source_dir: str = ''
  install_hint: str = ''
  source: str = ''


def _shapes_config(image_size: int) -> Any:
  from cnnjax.datasets import shapes
  return shapes.builder_config(image_size)


DATASETS: dict[str, DatasetSpec] = {
    'shapes': DatasetSpec(32, 3, (0.5,) * 3, (0.29,) * 3, offline=True, sizes=(8, 224),  # shapes.MIN/MAX_SIZE
                          builder_config=_shapes_config),
    'digits': DatasetSpec(8, 1, (0.305,), (0.375,), offline=True),
    'mnist': DatasetSpec(28, 1, (0.1307,), (0.3081,), idx=True),
    'fashion_mnist': DatasetSpec(28, 1, (0.2860,), (0.3530,), idx=True, source_dir='/usr/share/datasets/fashion-mnist',
                                 install_hint='apt-get install -y dataset-fashion-mnist (as root)'),
    'cifar10': DatasetSpec(32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cats_vs_dogs': DatasetSpec(0, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), source='tfds'),  # no test split
}


def split_sizes(data_config: ml_collections.ConfigDict, num_examples: Mapping[str, int]) -> tuple[int, int]:
  """(train, validation) example counts of the arrays' train split (``num_examples``: split -> examples), carved
  in its order: the last ``val_fraction`` is the validation split."""
  n = num_examples['train']
  n_val = round(data_config.val_fraction * n)
  return n - n_val, n_val


def num_examples(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  """TFDS split name -> examples, of a builder."""
  return {name: split.num_examples for name, split in builder.info.splits.items()}


PIPELINES = ('auto', 'host', 'device')
DEVICE_MEMORY_SHARE = 0.25  # pipeline=auto: the device pipeline when the uint8 splits take at most this share


def tensorflow_available() -> bool:
  """Whether TensorFlow can be imported (without importing it): TFDS's tfrecord files and its downloads need it;
  without it TFDS prepares and reads datasets as array_record files."""
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):  # an import hook that refuses it; a module object without a spec
    return False


def file_format() -> str:
  """The file format datasets are prepared in: TFDS's default, tfrecord, where TensorFlow is installed, else
  array_record (which TFDS writes and reads without TensorFlow; the examples and their order are the same)."""
  return 'tfrecord' if tensorflow_available() else 'array_record'


def pipeline(data_config: ml_collections.ConfigDict, examples: Mapping[str, int]) -> str:
  """'host' (batches made on the host) or 'device' (the splits on every device; ``device_pipeline``) for
  ``--config.data.pipeline``:
  auto is the device pipeline where the uint8 splits (``examples``: split -> examples) take at most
  DEVICE_MEMORY_SHARE of a local device's memory (the machine's for a CPU). In a multi-host run every
  process takes process 0's choice (hosts may differ in memory; the processes must agree)."""
  if data_config.pipeline != 'auto':
    return data_config.pipeline
  size = sum(examples.values()) * int(np.prod(image_shape(data_config)))
  stats = jax.local_devices()[0].memory_stats() or {}
  memory = stats.get('bytes_limit') or os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  choice = 'device' if size <= DEVICE_MEMORY_SHARE * memory else 'host'
  if jax.process_count() > 1:
    choice = PIPELINES[int(multihost_utils.broadcast_one_to_all(np.int32(PIPELINES.index(choice))))]
  return choice


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Shapes and sizes the model and the loop need."""
  image_shape: tuple[int, int, int]
  num_outputs: int


def get_spec(data_config: ml_collections.ConfigDict | str) -> DatasetSpec:
  """The DatasetSpec of ``config.data`` (or of a built-in dataset's name): a built-in dataset's, or a folder's,
  NumPy file's or TFDS dataset's (``sources``; its mean and std are the prepared arrays', ``with_stats``)."""
  name = data_config if isinstance(data_config, str) else data_config.name
  from cnnjax import sources
  if sources.kind(name):
    grayscale = not isinstance(data_config, str) and bool(data_config.grayscale)
    offline = sources.kind(name) != 'tfds' or DATASETS.get(sources.tfds_name(name), DATASETS['cifar10']).offline
    return DatasetSpec(mean=(0.5,), std=(0.25,), offline=offline, source=sources.kind(name),
                       **sources.spec_fields(name, grayscale))
  try:
    return lookup('data.name', name, DATASETS)
  except ConfigError as e:
    raise ConfigError(f'{e}, or folder:PATH, npz:PATH or tfds:NAME for other data') from None


def with_stats(spec: DatasetSpec, mean: Sequence[float] | None, std: Sequence[float] | None) -> DatasetSpec:
  """``spec`` with the per-channel statistics measured when the data was prepared, where it was."""
  return spec if mean is None else dataclasses.replace(spec, mean=tuple(mean), std=tuple(std))


def image_size(data_config: ml_collections.ConfigDict) -> int:
  """The side of the images the model sees: config.data.image_size, or the dataset's own when it is 0."""
  spec = get_spec(data_config)
  size = data_config.image_size or spec.image_size or RESIZE_DEFAULT
  if spec.sizes and not spec.sizes[0] <= size <= spec.sizes[1]:
    raise ConfigError(f'--config.data.image_size={size}: {data_config.name} are generated at sizes '
                      f'{spec.sizes[0]}..{spec.sizes[1]}')
  if not spec.sizes and not spec.source and spec.image_size and size != spec.image_size:
    raise ConfigError(f'--config.data.image_size={size}: {data_config.name} images are {spec.image_size}x'
                      f'{spec.image_size}; set --config.data.image_size={spec.image_size} (or 0 for native)')
  return size


def image_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the model sees."""
  size = image_size(data_config)
  return size, size, get_spec(data_config).channels


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``--config.data.*`` flag for a value that cannot serve (an unknown dataset or
  image size, a fraction or probability out of range, a pipeline size out of range, a source_dir for a
  dataset that is not read from IDX files); pure: reads no file."""
  spec = get_spec(data_config)
  check_int('data.image_size', data_config.image_size, 0)
  check_bool('data.grayscale', data_config.grayscale)
  from cnnjax import sources
  if data_config.grayscale and sources.kind(data_config.name) not in ('folder', 'tfds'):
    raise ConfigError(f'--config.data.grayscale=True converts the images of a folder: or tfds: dataset; '
                      f'{data_config.name}\'s channels are its own: drop the flag')
  size = image_size(data_config)
  check_number('data.val_fraction', data_config.val_fraction, 0, 1, high_open=True,
               hint='0 = no validation split (evaluate on test)')
  check_number('data.random_erasing', data_config.random_erasing, 0, 1, hint='a probability; 0.5 is usual, 0 = off')
  for flag in ('augment_flip', 'augment_crop'):
    check_bool(f'data.{flag}', data_config[flag])
  check_int('data.crop_padding', data_config.crop_padding, 0)
  if data_config.crop_padding >= size:
    raise ConfigError(f'--config.data.crop_padding={data_config.crop_padding} must be smaller than the '
                      f'{size}-pixel image it pads by reflection')
  check_int('data.prefetch', data_config.prefetch, 1)
  check_number('data.download_timeout_s', data_config.download_timeout_s, 0, low_open=True)
  check_str('data.source_dir', data_config.source_dir)
  check_choice('data.pipeline', data_config.pipeline, PIPELINES)
  if data_config.source_dir and not spec.idx:
    idx_names = sorted(k for k, v in DATASETS.items() if v.idx)
    raise ConfigError(f'--config.data.source_dir is for datasets prepared from IDX files ({idx_names}); drop it '
                      f'for --config.data.name={data_config.name}')


def get_builder(data_config: ml_collections.ConfigDict, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``config.data`` (its features and splits are known before it is prepared)."""
  try:
    import tensorflow_datasets as tfds

    import cnnjax.datasets  # noqa: F401 - registers the offline builders with tfds
  except ImportError as e:
    raise DataError(f'--config.data.name={data_config.name} is not prepared as arrays in this --data_dir, and '
                    f'preparing it needs TensorFlow Datasets ({e}); pip install tensorflow-datasets, '
                    'or prepare it once where they are installed (any run of it with --config.data.pipeline=device) '
                    'and bring that --data_dir') from None
  from cnnjax import sources
  spec = get_spec(data_config)
  config = spec.builder_config(image_size(data_config)) if spec.builder_config else None
  return tfds.builder(sources.tfds_name(data_config.name), config=config, data_dir=data_dir)


def features(data_config: ml_collections.ConfigDict, data_dir: str | None) -> Any:
  """The dataset's features (name -> shape and classes), without preparing it."""
  if get_spec(data_config).source:
    from cnnjax import sources
    return sources.features(data_config, image_shape(data_config))  # without preparing it
  return get_builder(data_config, data_dir).info.features


def prepare(data_config: ml_collections.ConfigDict, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of ``config.data``, prepared in ``data_dir`` (offline datasets are generated on first use) and
  checked.

  Processes that share a fresh data_dir (a cluster array's tasks, a multi-host run) prepare it once: the first
  holds a lock in the data_dir while the others wait, then every one uses the same files. In a multi-host run
  without a shared filesystem each host prepares its own copy, which is the same data: the builders are
  deterministic. Prepared data is sealed by a manifest of checksums and checked at every start (a dataset
  prepared without one is read through once, then sealed), so damaged files are named before anything trains.

  Raises:
    ConfigError for a data_dir that is not a usable directory; DownloadTimeout for a download that does not
    finish within config.data.download_timeout_s (no internet), with advice; DataError for damaged files.
  """
  if data_dir and (os.path.exists(data_dir) and not os.path.isdir(data_dir)
                   or os.path.isdir(data_dir) and not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK)):
    raise ConfigError(f'--data_dir={data_dir} is not a readable and writable directory; point it at one')
  builder = get_builder(data_config, data_dir)
  if jax.process_index() == 0 and not builder.is_prepared():
    builder = _prepare_once(data_config, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('cnnjax: data prepared by process 0')
    builder = get_builder(data_config, data_dir)
    if not builder.is_prepared():
      builder = _prepare_once(data_config, data_dir)
  _check(builder, data_config.name)
  return builder


def _prepare_once(data_config: ml_collections.ConfigDict, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Prepares the data under a lock in the data_dir, unless another process has prepared it meanwhile, and
  seals what it prepared."""
  root = get_builder(data_config, data_dir).data_dir_root
  os.makedirs(root, exist_ok=True)
  name = data_config.name
  waiting = functools.partial(logging.info, 'Waiting for another process that is preparing %s in %s.', name, root)
  with files.locked(os.path.join(root, f'.cnnjax-prepare-{name}.lock'), on_wait=waiting):
    builder = get_builder(data_config, data_dir)  # a fresh look: the other process may have prepared it
    if not builder.is_prepared():
      builder = _prepare(builder, data_config, data_dir)
      files.seal(builder.data_dir)
  return builder


def _check(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """Raises DataError naming the damaged file of a prepared dataset and how to prepare it anew, or saying what
  to install for files that only TensorFlow reads."""
  directory = builder.data_dir
  if not tensorflow_available() and builder.info.file_format.value != 'array_record':
    raise DataError(f'the prepared {name} data in {directory} is in {builder.info.file_format.value} files, which '
                    'only TensorFlow reads: pip install tensorflow-cpu, or move that directory away to prepare it '
                    'anew without TensorFlow')
  if files.is_sealed(directory):
    problem = files.damage(directory)
  else:  # prepared by an older cnnjax or by TFDS itself: read every record once (their CRCs), then seal
    problem = _read_through(builder)
    if problem is None and os.access(directory, os.W_OK):
      files.seal(directory)
  if problem:
    raise DataError(f'the prepared {name} data in {directory} is damaged ({problem}); move that directory away '
                    'and run again to prepare it anew')


def _read_through(builder: tfds.core.DatasetBuilder) -> str | None:
  """Reads every record of every split once (images left encoded where TensorFlow reads them); what failed, or
  None."""
  if not tensorflow_available():
    for split in builder.info.splits:
      try:
        source = builder.as_data_source(split)
        for i in range(len(source)):
          source[i]
      except Exception as e:  # noqa: BLE001 - any failure to read a record is damage
        return f'split {split}: {type(e).__name__}: {str(e).strip()[:200]}'
    return None
  import tensorflow as tf
  import tensorflow_datasets as tfds

  skip = {k: tfds.decode.SkipDecoding() for k, v in builder.info.features.items()
          if isinstance(v, tfds.features.Image)}
  for split in builder.info.splits:
    try:
      builder.as_dataset(split=split, decoders=skip).reduce(0, lambda n, _: n + 1)
    except tf.errors.OpError as e:
      return f'split {split}: {type(e).__name__}: {(e.message.strip().splitlines() or [""])[0][:200]}'
  return None


def _prepare(builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict, data_dir: str | None
             ) -> tfds.core.DatasetBuilder:
  """Generates, reads from local IDX files, or downloads the data into ``data_dir``."""
  from cnnjax.datasets import idx

  spec = get_spec(data_config)
  source_dir = data_config.source_dir or spec.source_dir
  if spec.idx and source_dir and idx.find(source_dir):
    logging.info('Preparing %s from the IDX files in %s (once per data_dir).', data_config.name, source_dir)
    with _quiet_tfds():
      return idx.prepare(data_config.name, source_dir, data_dir, file_format())
  if data_config.source_dir:
    raise ConfigError(f'--config.data.source_dir={data_config.source_dir} does not hold the IDX files of '
                      f'{data_config.name} ({", ".join(idx.FILES)}, gzipped or not); point it at a '
                      'directory that does')
  if not spec.offline and not tensorflow_available():
    raise DataError(f'preparing {data_config.name} from its download needs TensorFlow (TFDS encodes its images '
                    'with it): pip install tensorflow-cpu, or prepare it once where TensorFlow is installed and '
                    'bring that --data_dir')
  _download_and_prepare(builder, data_config)
  return builder


@contextlib.contextmanager
def _quiet_tfds():
  """Silences TFDS while it prepares data made on this machine: its bold 'Downloading and preparing dataset
  Unknown size' and 'downloaded and prepared' lines (stdout) and its progress bars (escape codes in log files).
  cnnjax says what it prepares in one line instead. Downloads keep TFDS's progress bars."""
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(True)


def _download_and_prepare(builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict) -> None:
  """Runs builder.download_and_prepare(), giving up after config.data.download_timeout_s for downloads.

  tfds retries a failing download for a long time; offline, that is a hang. The download runs in a daemon
  thread so that a timeout can end the run with advice instead.
  """
  if get_spec(data_config).offline:  # generated locally: no network, no timeout
    logging.info('Generating %s in %s (once per data_dir).', data_config.name, builder.data_dir_root)
    with _quiet_tfds():
      builder.download_and_prepare(file_format=file_format())
    return
  errors: list[BaseException] = []

  def target():
    try:
      builder.download_and_prepare(file_format=file_format())
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
      errors.append(e)

  thread = threading.Thread(target=target, daemon=True, name='tfds-download')
  thread.start()
  thread.join(data_config.download_timeout_s)
  if thread.is_alive():
    name, spec = data_config.name, get_spec(data_config)
    remedies = [f'put its IDX files in --config.data.source_dir={spec.source_dir or "DIR"}'
                + (f' ({spec.install_hint})' if spec.install_hint else '')] if spec.idx else []
    remedies += ['download it once on a machine with internet into that --data_dir (python -c "import '
                 f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR').download_and_prepare()\")",
                 'raise --config.data.download_timeout_s',
                 'or use an offline dataset: --config.data.name=shapes or digits']
    advice = ', '.join(remedies)
    raise DownloadTimeout(f'--config.data.name={name} is not in --data_dir={builder.data_dir_root} and downloading it '
                      f'did not finish in {data_config.download_timeout_s} s (no internet?). '
                      f'{advice[0].upper()}{advice[1:]}')
  if errors:
    raise errors[0]
