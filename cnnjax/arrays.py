"""A prepared dataset's splits as arrays that numpy alone loads, for the device pipeline.

Each split of a prepared TFDS dataset of fixed-size images is written once to
DATA_DIR/cnnjax_arrays/<dataset>/<config>/<version>/ as one ``<split>.<feature>.npy`` file per feature (images
as uint8 [N, H, W, C], in the TFDS split's own order, the order the validation split is carved by) and sealed
by a manifest of checksums; every later run checks the seal and loads the files with numpy alone. Processes
that share a data_dir write it once, under a lock.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from absl import logging

from cnnjax import files
from cnnjax.errors import DataError

ARRAYS_DIR = 'cnnjax_arrays'


def location(builder) -> str:
  """Where the arrays of a TFDS builder's prepared data live: beside its TFDS files, under ARRAYS_DIR."""
  return os.path.join(builder.data_dir_root, ARRAYS_DIR, os.path.relpath(builder.data_dir, builder.data_dir_root))


def prepare(builder) -> str:
  """The directory of ``builder``'s splits as arrays, written (once, under a lock) if need be, and checked.

  Raises:
    DataError naming the damaged file and how to write the arrays anew.
  """
  directory = location(builder)
  if not files.is_sealed(directory):
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with files.locked(directory + '.lock'):
      if not files.is_sealed(directory):  # another process may have written them meanwhile
        _write(builder, directory)
  problem = files.damage(directory)
  if problem:
    raise DataError(f'the arrays of {builder.name} in {directory} are damaged ({problem}); move that directory '
                    'away and run again to write them anew')
  return directory


def _write(builder, directory: str) -> None:
  """Reads every split of ``builder`` once (TFDS, in its split order) and writes one .npy file per feature."""
  import tensorflow_datasets as tfds

  logging.info('Writing %s as arrays to %s (once).', builder.name, directory)
  tmp = f'{directory}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False,
                            read_config=tfds.ReadConfig(add_tfds_id=False))
    for name, value in tfds.as_numpy(ds).items():
      np.save(os.path.join(tmp, f'{split}.{name}.npy'), value)
  files.seal(tmp)
  shutil.rmtree(directory, ignore_errors=True)  # an unsealed leftover of a killed writer
  os.rename(tmp, directory)


def load(directory: str, split: str) -> dict[str, np.ndarray]:
  """The features of ``split`` as arrays: {'image': uint8 [N, H, W, C], 'label': [N], ...}."""
  prefix = f'{split}.'
  return {name[len(prefix):-len('.npy')]: np.load(os.path.join(directory, name))
          for name in sorted(os.listdir(directory)) if name.startswith(prefix) and name.endswith('.npy')}
