"""A prepared dataset's splits as arrays that numpy alone loads, which both pipelines read.

Each split of a built-in TFDS dataset (fixed-size images) is written once to
DATA_DIR/cnnjax_arrays/<dataset>[-<image size>]/ as one ``<split>.<feature>.npy`` file per feature (images as
uint8 [N, H, W, C], in the TFDS split's own order, the order the validation split is carved by) with
``info.json`` (each feature's shape and classes, each split's size), sealed by a manifest of checksums. Later
runs check the seal and read the files with numpy alone: neither TensorFlow nor TensorFlow Datasets is
imported. Processes that share a data_dir write them once, under a lock. Data whose images are decoded and fitted
as they are prepared (a folder, an npz file, any TFDS dataset by name) is written in the same format by
``sources`` and ``preparation``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np
from absl import logging

from cnnjax import data, files, sources
from cnnjax.errors import DataError

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

ARRAYS_DIR = 'cnnjax_arrays'
INFO_FILE = 'info.json'
DEFAULT_DATA_DIR = os.path.join('~', 'tensorflow_datasets')  # TFDS's own default, when --data_dir is not given


@dataclasses.dataclass(frozen=True)
class Feature:
  """What the task heads read of a feature, as TFDS's features say it: its shape and, for labels, its classes."""
  shape: tuple[int, ...]
  num_classes: int | None = None


@dataclasses.dataclass(frozen=True)
class Info:
  """A dataset's features (name -> Feature) and its splits' sizes (TFDS split name -> examples); for a user's
  data (``sources``) also its class names, the training images' per-channel mean and std, and the source's
  record (kind, path, fingerprint), by which a changed source is prepared anew."""
  features: dict[str, Feature]
  num_examples: dict[str, int]
  classes: tuple[str, ...] | None = None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  source: dict[str, Any] | None = None


def location(data_config: ml_collections.ConfigDict, data_dir: str | None) -> str:
  """Where the arrays of ``config.data`` live in ``data_dir``."""
  spec = data.get_spec(data_config)
  name = f'{data_config.name}-{data.image_size(data_config)}' if spec.sizes else data_config.name
  if spec.source in ('folder', 'npz'):  # a user's folder or file: its name, a digest of its path, how it was fitted
    path = sources.path_of(data_config.name)
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    name = (f'{spec.source}-{os.path.basename(path.rstrip(os.sep)) or "root"}-{digest}-{data.image_size(data_config)}'
            + '-gray' * bool(data_config.grayscale))
  elif spec.source:  # a TFDS dataset decoded and fitted: its name (a config's '/' as '.') and how it was fitted
    name = (f'tfds-{sources.tfds_name(data_config.name).replace("/", ".")}-{data.image_size(data_config)}'
            + '-gray' * bool(data_config.grayscale))
  root = data_dir or os.environ.get('TFDS_DATA_DIR', DEFAULT_DATA_DIR)
  return os.path.join(os.path.expanduser(root), ARRAYS_DIR, name)


def find(directory: str) -> Info | None:
  """The Info of the arrays in ``directory``, after checking their seal; None when none were written.

  Raises:
    DataError naming the damaged file and how to write the arrays anew.
  """
  if not files.is_sealed(directory):
    return None
  problem = files.damage(directory)
  if problem:
    raise DataError(f'the dataset arrays in {directory} are damaged ({problem}); move that directory away and run '
                    'again to write them anew')
  raw = files.read_json(os.path.join(directory, INFO_FILE), f'move {directory} away and run again')
  stats = {k: tuple(raw[k]) if k in raw else None for k in ('classes', 'mean', 'std')}
  return Info({k: Feature(tuple(v['shape']), v['num_classes']) for k, v in raw['features'].items()},
              raw['num_examples'], source=raw.get('source'), **stats)


def write(builder: tfds.core.DatasetBuilder, directory: str) -> Info:
  """Writes the prepared ``builder``'s splits to ``directory`` (once, under a lock) and returns their Info."""
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with files.locked(directory + '.lock'):
    if not files.is_sealed(directory):  # another process may have written them meanwhile
      _write(builder, directory)
  return find(directory)


def _write(builder: tfds.core.DatasetBuilder, directory: str) -> None:
  """Reads every split of ``builder`` once (in its split order) and writes one .npy file per feature."""
  logging.info('Writing %s as arrays to %s (once).', builder.name, directory)
  tmp = f'{directory}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for split in builder.info.splits:
    for name, value in _read_split(builder, split).items():
      np.save(os.path.join(tmp, f'{split}.{name}.npy'), value)
  features = {name: {'shape': list(feature.shape), 'num_classes': getattr(feature, 'num_classes', None)}
              for name, feature in builder.info.features.items()}
  label = builder.info.features['label'] if 'label' in builder.info.features else None
  classes = {'classes': list(label.names)} if getattr(label, 'names', None) else {}
  files.write_json(os.path.join(tmp, INFO_FILE), {'features': features, 'num_examples': data.num_examples(builder),
                                                  'tfds': f'{builder.name}/{builder.info.full_name}', **classes})
  files.seal(tmp)
  shutil.rmtree(directory, ignore_errors=True)  # an unsealed leftover of a killed writer
  os.rename(tmp, directory)


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
  """Every feature of ``split`` as one array, in the split's order: through tf.data where TensorFlow is installed
  (tfrecord files), else through TFDS's random-access data source (array_record files, no TensorFlow)."""
  import tensorflow_datasets as tfds

  if builder.info.file_format.value == 'array_record':
    source = builder.as_data_source(split)
    examples = [source[i] for i in range(len(source))]
    return {name: np.stack([e[name] for e in examples]) for name in builder.info.features}
  ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False,
                          read_config=tfds.ReadConfig(add_tfds_id=False))
  return tfds.as_numpy(ds)


def load(directory: str, split: str, mmap: bool = False) -> dict[str, np.ndarray]:
  """The features of ``split`` as arrays: {'image': uint8 [N, H, W, C], 'label': [N], ...}; memory-mapped (read
  from disk as they are indexed) with ``mmap``."""
  prefix = f'{split}.'
  return {name[len(prefix):-len('.npy')]: np.load(os.path.join(directory, name), mmap_mode='r' if mmap else None)
          for name in sorted(os.listdir(directory)) if name.startswith(prefix) and name.endswith('.npy')}
