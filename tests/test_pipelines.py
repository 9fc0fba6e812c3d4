"""pipelines: the host pipeline reads the prepared arrays and trains what the device pipeline trains, to the last
bit; its prefetching thread keeps order and hands on errors."""

import numpy as np
import pytest

from cnnjax import pipelines, train


def test_the_host_and_device_pipelines_train_the_same_bits(config, data_dir, tmp_path):
  """The host pipeline gathers each step's batch on the host in the device pipeline's order, with the same
  positions (so the same augmentation), and the step augments it: the same parameters and metrics, bit for bit."""
  config.data.augment_flip, config.data.augment_crop, config.steps_per_dispatch = True, True, 1
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 12, 6, 12
  results = {}
  for kind in ('host', 'device'):
    config.data.pipeline = kind
    results[kind] = train.train_and_evaluate(config, str(tmp_path / kind), data_dir)
  assert type(results['host'].run.pipeline) is pipelines.HostPipeline
  assert type(results['device'].run.pipeline) is pipelines.DevicePipeline
  assert train.params_fingerprint(results['host'].variables['params']) == train.params_fingerprint(
      results['device'].variables['params'])
  assert results['host'].metrics == results['device'].metrics


def test_a_host_batch_is_the_device_pipelines_examples_in_its_order(config, data_dir):
  run = train.setup(config, data_dir)
  batch = run.pipeline.batch(3)  # step 3 on 8 devices of 8 examples
  assert batch['image'].shape == (8, 8, 32, 32, 3) and batch['image'].dtype == np.uint8
  np.testing.assert_array_equal(batch['position'].reshape(-1), np.arange(3 * 64, 4 * 64))
  index = run.pipeline._order(batch['position'].reshape(-1))
  np.testing.assert_array_equal(batch['image'].reshape(64, 32, 32, 3), run.pipeline.arrays['train']['image'][index])
  assert len(set(index.tolist())) == 64 and index.max() < 9167  # training examples only, none twice


def test_prefetch_keeps_order_and_raises_what_the_thread_raised():
  assert list(pipelines.prefetch(iter(range(10)), 3)) == list(range(10))

  def failing():
    yield 1
    raise OSError('disk gone')
  items = pipelines.prefetch(failing(), 2)
  assert next(items) == 1
  with pytest.raises(OSError, match='disk gone'):
    next(items)
