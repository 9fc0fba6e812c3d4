"""Input pipelines: offline builders, raw batch layout, exact resume position, eval coverage, mocked datasets."""

import numpy as np
import pytest

from cnnjax import data, heads, input_pipeline
from cnnjax.config import ConfigError
from cnnjax.datasets import shapes as shapes_ds


def _prepared(config, data_dir):
  """The prepared builder of config.data and the head's example -> target, as train.setup makes them."""
  builder = data.prepare(config.data, data_dir)
  return builder, heads.get_head(config.head).target(builder.info.features, config.data)


def _spec(config):
  return data.get_spec(config.data.name)


def test_shapes_examples_are_deterministic_and_labelled():
  a = shapes_ds.draw_example(np.random.default_rng([0, 0, 7]), 32)
  b = shapes_ds.draw_example(np.random.default_rng([0, 0, 7]), 32)
  np.testing.assert_array_equal(a['image'], b['image'])
  assert a['image'].shape == (32, 32, 3) and a['image'].dtype == np.uint8
  assert 0 <= a['label'] < len(shapes_ds.CLASSES) and 0.15 <= a['size'] <= 0.35


def test_shapes_builder_and_train_batches(config, data_dir):
  builder, target = _prepared(config, data_dir)
  assert data.image_shape(config.data) == (32, 32, 3) and builder.info.features['label'].num_classes == 6
  splits = builder.info.splits
  assert splits['train'].num_examples == 10_000 and splits['test'].num_examples == 2_000
  batch = next(input_pipeline.train_iterator(config, _spec(config), builder, target, num_devices=8))
  assert batch['image'].shape == (8, 8, 32, 32, 3) and batch['image'].dtype == np.uint8  # raw: the step normalises
  assert batch['target'].shape == (8, 8) and batch['target'].dtype == np.int32
  np.testing.assert_array_equal(batch['position'].reshape(-1), np.arange(64))  # keys the step's augmentation


def test_resuming_at_step_k_yields_batch_k(config, data_dir):
  builder, target = _prepared(config, data_dir)
  fresh = input_pipeline.train_iterator(config, _spec(config), builder, target, num_devices=8)
  batches = [next(fresh) for _ in range(4)]
  resumed = next(input_pipeline.train_iterator(config, _spec(config), builder, target, num_devices=8, start_step=3))
  for key in ('image', 'target', 'position'):
    np.testing.assert_array_equal(resumed[key], batches[3][key])
  assert not np.array_equal(batches[2]['image'], batches[3]['image'])


def test_eval_batches_cover_the_split_once(config, data_dir):
  batches = list(input_pipeline.eval_batches(config, _spec(config), *_prepared(config, data_dir), num_devices=8,
                                             split='test'))
  assert len(batches) == 4  # ceil(2000 / 512)
  assert sum(b['mask'].sum() for b in batches) == 2000 and batches[0]['image'].shape == (8, 64, 32, 32, 3)


def test_digits_builder(config, data_dir):
  config.data.name = 'digits'
  builder, _ = _prepared(config, data_dir)
  assert data.image_shape(config.data) == (8, 8, 1) and builder.info.features['label'].num_classes == 10
  assert builder.info.splits['train'].num_examples == 1437 and builder.info.splits['test'].num_examples == 360


@pytest.mark.parametrize('head,target_shape', [('binary', (8, 8)), ('regression', (8, 8, 1))])
def test_task_targets(config, data_dir, head, target_shape):
  config.head = head
  builder, target = _prepared(config, data_dir)
  batch = next(input_pipeline.train_iterator(config, _spec(config), builder, target, num_devices=8))
  assert batch['target'].shape == target_shape and batch['target'].dtype == np.float32
  if head == 'binary':
    assert set(np.unique(batch['target'])) <= {0.0, 1.0}
    assert heads.get_head(head).num_outputs(builder.info.features, config.data) == 1
  else:
    assert 0.15 <= batch['target'].min() and batch['target'].max() <= 0.35


@pytest.mark.parametrize('name,image_size,shape', [('mnist', 0, (28, 28, 1)), ('fashion_mnist', 0, (28, 28, 1)),
                                                   ('cifar10', 0, (32, 32, 3)), ('cats_vs_dogs', 64, (64, 64, 3))])
def test_download_only_datasets_on_mock_data(config, tmp_path, mock_dataset, name, image_size, shape):
  config.data.name, config.data.image_size = name, image_size
  with mock_dataset(name, 100):
    builder, target = _prepared(config, str(tmp_path))
    batch = next(input_pipeline.train_iterator(config, _spec(config), builder, target, num_devices=8))
  assert data.image_shape(config.data) == shape and batch['image'].shape == (8, 8, *shape)
  assert batch['image'].dtype == (np.float32 if image_size else np.uint8)  # resized: float on the 0-255 scale
  assert 0 <= batch['image'].min() and batch['image'].max() <= 255


def test_wrong_image_size_for_a_fixed_size_dataset(config):
  config.data.name, config.data.image_size = 'mnist', 32
  with pytest.raises(ConfigError, match='--config.data.image_size=28'):
    data.image_size(config.data)
