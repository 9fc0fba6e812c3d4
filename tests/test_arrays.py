"""Prepared splits as numpy arrays: written once, sealed, read back equal to TFDS's examples, damage named."""

import os

import numpy as np
import pytest

from cnnjax import arrays, data
from cnnjax.errors import DataError


def test_arrays_are_the_tfds_examples_and_damage_is_named(config, data_dir, tmp_path):
  config.data.name = 'digits'
  builder = data.prepare(config.data, data_dir)
  directory = str(tmp_path / 'digits')
  assert arrays.find(directory) is None  # nothing written yet
  info = arrays.write(builder, directory)
  assert info.num_examples == {'train': 1437, 'test': 360} and info.features['image'].shape == (8, 8, 1)
  test = arrays.load(directory, 'test')
  first = next(iter(builder.as_data_source('test') if builder.info.file_format.value == 'array_record' else
                    builder.as_dataset(split='test', shuffle_files=False).as_numpy_iterator()))
  assert test['image'].dtype == np.uint8 and test['image'].shape == (360, 8, 8, 1)
  np.testing.assert_array_equal(test['image'][0], first['image'])
  assert test['label'][0] == first['label']
  path = os.path.join(directory, 'test.image.npy')
  with open(path, 'r+b') as f:
    f.seek(-1, os.SEEK_END)
    byte = f.read(1)
    f.seek(-1, os.SEEK_END)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(DataError, match=r'test.image.npy.*move that directory away'):
    arrays.find(directory)
