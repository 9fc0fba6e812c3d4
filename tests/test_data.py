"""Datasets: Fashion-MNIST prepared from its IDX files (checked against a reader written here), the
validation split, and the refusals for missing files."""

import gzip
import hashlib
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax import data, train
from cnnjax.cli import load_experiment
from cnnjax.config import ConfigError, apply_overrides
from cnnjax.datasets import idx
from cnnjax.errors import DownloadTimeout

FASHION_DIR = data.DATASETS['fashion_mnist'].source_dir
needs_fashion = pytest.mark.skipif(
    idx.find(FASHION_DIR) is None,
    reason=f'no Fashion-MNIST IDX files in {FASHION_DIR} (as root: apt-get install -y dataset-fashion-mnist)')


def _read_idx(path, header):
  """The raw bytes after the header of a gzipped IDX file (images: 16 bytes, labels: 8)."""
  with gzip.open(path, 'rb') as f:
    return np.frombuffer(f.read(), np.uint8)[header:]


@pytest.fixture(scope='module')
def fashion(data_dir):
  """Fashion-MNIST prepared in the session's data_dir from the Debian package's IDX files."""
  return data.prepare(load_experiment('fashion_mnist').get_config().data, data_dir)


@needs_fashion
def test_fashion_mnist_from_idx_files_is_the_original_data(fashion):
  assert fashion.name == 'fashion_mnist' and str(fashion.version) == tfds.builder_cls('fashion_mnist').VERSION
  assert fashion.info.features['label'].names[:2] == ['T-shirt/top', 'Trouser']
  for split, prefix in (('train', 'train'), ('test', 't10k')):
    images = _read_idx(os.path.join(FASHION_DIR, f'{prefix}-images-idx3-ubyte.gz'), 16).reshape(-1, 28 * 28)
    labels = _read_idx(os.path.join(FASHION_DIR, f'{prefix}-labels-idx1-ubyte.gz'), 8)
    assert fashion.info.splits[split].num_examples == len(labels) == len(images)
    want = sorted(hashlib.sha1(im.tobytes() + bytes([lb])).hexdigest() for im, lb in zip(images, labels, strict=True))
    got = sorted(hashlib.sha1(ex['image'].tobytes() + bytes([ex['label']])).hexdigest()
                 for ex in tfds.as_numpy(fashion.as_dataset(split=split)))
    assert got == want  # the same (image, label) pairs, in TFDS's own order


@needs_fashion
def test_validation_split_is_the_last_twelfth_of_train(config, fashion):
  config.data.name = 'fashion_mnist'
  assert data.split_sizes(config.data, data.num_examples(fashion)) == (55_000, 5_000)
  config.data.val_fraction = 0
  assert data.split_sizes(config.data, data.num_examples(fashion)) == (60_000, 0)


def test_the_validation_split_is_the_end_of_the_training_arrays(config, data_dir):
  run = train.setup(config, data_dir)  # shapes: 10,000 train, 1/12 of them (833) validation
  assert sum(b['mask'].sum() for b in run.pipeline.eval_batches('val')) == 833
  val = run.pipeline.sample('val', 833)[1]
  np.testing.assert_array_equal(val, run.pipeline.arrays['train']['target'][9167:])


def test_missing_idx_files_in_source_dir_are_refused_naming_the_flag(config, tmp_path):
  config.data.name, config.data.source_dir = 'fashion_mnist', str(tmp_path / 'empty')
  with pytest.raises(ConfigError, match=r'--config.data.source_dir=.*empty does not hold the IDX files of '
                                        r'fashion_mnist \(train-images-idx3-ubyte'):
    train.train_and_evaluate(config, str(tmp_path / 'work'), str(tmp_path / 'data'))
  assert not (tmp_path / 'work').exists()


def test_no_files_and_no_internet_names_the_flag_and_the_package(config, tmp_path, monkeypatch):
  monkeypatch.setattr(data, 'DATASETS', {**data.DATASETS, 'fashion_mnist': data.DatasetSpec(
      **{**data.DATASETS['fashion_mnist'].__dict__, 'source_dir': str(tmp_path / 'not-installed')})})
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', lambda self, **kw: time.sleep(30))
  config.data.name, config.data.download_timeout_s = 'fashion_mnist', 1
  with pytest.raises(DownloadTimeout, match=r'did not finish in 1 s \(no internet\?\)\. Put its IDX files in '
                                        r'--config.data.source_dir=.*not-installed \(apt-get install -y '
                                        r'dataset-fashion-mnist \(as root\)\)'):
    train.train_and_evaluate(config, str(tmp_path / 'work'), str(tmp_path / 'data'))
  assert not (tmp_path / 'work').exists()


@pytest.mark.parametrize('overrides,message', [
    ({'data.val_fraction': 1.0}, r'--config.data.val_fraction=1.0 must be a finite number in \[0, 1\)'),
    ({'data.source_dir': '/x'}, r'--config.data.source_dir is for datasets prepared from IDX files'),
])
def test_bad_data_settings_are_refused(config, overrides, message):
  with pytest.raises(ConfigError, match=message):
    train.validate(apply_overrides(config, overrides), 8)


@needs_fashion
def test_fashion_mnist_experiment_trains_offline(data_dir, tmp_path):
  """The real-data baseline, 120 steps of it: well above chance (0.1) on the test split, chosen on nothing."""
  config = apply_overrides(load_experiment('fashion_mnist').get_config(),
                           {'num_train_steps': 120, 'eval_every_steps': 120, 'checkpoint_every_steps': 120,
                            'log_every_steps': 40})
  metrics = train.train_and_evaluate(config, str(tmp_path), data_dir).metrics
  assert metrics['val_accuracy'] > 0.7 and metrics['test_accuracy'] > 0.7, metrics
