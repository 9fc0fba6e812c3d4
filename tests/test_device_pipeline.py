"""device_pipeline: the per-epoch permutation, batches that do not
depend on the number of devices, evaluation indices; the device pipeline end to end (resume, back-ends)."""

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import data, errors, loop, train
from cnnjax import device_pipeline as dp


@pytest.mark.parametrize('n', [1, 2, 3, 7, 10, 100, 1000, 9167])
def test_each_epoch_is_a_permutation_and_epochs_and_seeds_differ(n):
  i = jnp.arange(n, dtype=jnp.uint32)
  orders = {(seed, epoch): np.asarray(dp.permute(i, n, seed, jnp.full(n, epoch, jnp.uint32)))
            for seed in (0, 1) for epoch in (0, 1)}
  for order in orders.values():
    np.testing.assert_array_equal(np.sort(order), np.arange(n))  # every example once
  if n >= 10:
    assert len({o.tobytes() for o in orders.values()}) == 4
    assert abs(np.corrcoef(orders[0, 0], np.arange(n))[0, 1]) < 0.5  # shuffled, not near the identity


def _make_batch(num_train=50, batch_size=8, per_device=8, preprocess=None, seed=3):
  preprocess = preprocess or dp.Preprocess((0.5,), (0.25,))
  return functools.partial(dp.train_batch, num_train=num_train, batch_size=batch_size, per_device=per_device,
                           seed=seed, key=jax.random.key(seed), preprocess=preprocess)


def _data(n=60, size=6, channels=1):
  image = (np.arange(n * size * size * channels) % 251).astype(np.uint8).reshape(n, size, size, channels)
  return {'image': jnp.asarray(image), 'target': jnp.arange(n, dtype=jnp.int32)}


def test_training_batches_visit_every_training_example_once_per_epoch_and_never_a_validation_one():
  data, make = _data(), _make_batch(num_train=50, batch_size=10, per_device=10)
  seen = np.concatenate([np.asarray(make(data, jnp.int32(s), jnp.int32(0))['target']) for s in range(10)])
  np.testing.assert_array_equal(np.sort(seen[:50]), np.arange(50))  # epoch 0: steps 0-4
  np.testing.assert_array_equal(np.sort(seen[50:]), np.arange(50))  # epoch 1, in another order
  assert not np.array_equal(seen[:50], seen[50:])


def test_a_steps_batch_is_the_same_on_one_device_or_eight():
  augment = dp.Preprocess((0.5,), (0.25,), flip=True, crop_padding=2, random_erasing=0.5)
  data = _data()
  one = _make_batch(batch_size=16, per_device=16, preprocess=augment)(data, jnp.int32(7), jnp.int32(0))
  eight = _make_batch(batch_size=16, per_device=2, preprocess=augment)
  parts = [eight(data, jnp.int32(7), jnp.int32(d)) for d in range(8)]
  for key in ('image', 'target'):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), one[key])


def test_eval_indices_cover_the_range_once_split_over_devices_and_processes():
  start, count, batch = 100, 21, 8
  rows = [dp.eval_indices(start, count, batch, num_devices=4, first_device=2 * p, local_devices=2) for p in (0, 1)]
  assert len(rows[0]) == len(rows[1]) == 3
  seen = []
  for b in range(3):
    index = np.concatenate([rows[p][b]['index'] for p in (0, 1)]).reshape(-1)
    mask = np.concatenate([rows[p][b]['mask'] for p in (0, 1)]).reshape(-1)
    assert rows[0][b]['index'].shape == (2, 2)
    seen += list(index[mask])
  assert seen == list(range(100, 121))


# ---------------------------------------------------------------------------------------------------------
# End to end.

@pytest.fixture
def device_config(config):
  config.data.pipeline = 'device'
  config.data.augment_flip = config.data.augment_crop = True
  config.data.random_erasing = 0.5
  return config


def _checkpoint(workdir, step):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as manager:
    return manager.restore(step, args=ocp.args.StandardRestore())


def test_the_device_pipeline_learns_and_resumes_bitwise(device_config, data_dir, tmp_path):
  device_config.model.variant, device_config.data.random_erasing = 'small', 0.0
  device_config.num_train_steps, device_config.eval_every_steps = 150, 150
  device_config.checkpoint_every_steps = 75
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  result = train.train_and_evaluate(device_config, full, data_dir)
  assert result.run.pipeline.name == 'device' and result.metrics['test_accuracy'] > 0.5  # chance is 1/6
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '150'))  # as if killed after step 75's checkpoint
  again = train.train_and_evaluate(device_config, resumed, data_dir)
  assert again.start_step == 75
  jax.tree.map(np.testing.assert_array_equal, _checkpoint(resumed, 150), _checkpoint(full, 150))
  assert again.metrics == result.metrics


def test_the_device_pipeline_evaluates_every_example_once_as_the_host_pipeline_does(config, data_dir):
  host = train.setup(config, data_dir)
  config.data.pipeline = 'device'
  device = train.setup(config, data_dir)
  assert data.split_sizes(config.data, device.pipeline.num_examples) == (9167, 833)
  held = device.pipeline.arrays
  assert len(held['train']['target']) == 10_000 and len(held['test']['target']) == 2000
  state = host.backend.from_checkpoint(host.init_state(host.keys()[0]))
  for split, count in (('val', 833), ('test', 2000)):
    batches, eval_fn = device.pipeline.evaluation(split, device.eval_step)
    assert sum(int(b['mask'].sum()) for b in batches) == count
    got = loop.evaluate(eval_fn, state, batches, device.backend, split)
    host_batches, host_fn = host.pipeline.evaluation(split, host.eval_step)
    want = loop.evaluate(host_fn, state, host_batches, host.backend, split)
    assert got.keys() == want.keys()
    for k in got:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5)


def test_pmap_and_shard_map_train_the_same_on_the_device_pipeline(device_config, data_dir, tmp_path):
  device_config.num_train_steps = 10
  results = {}
  for backend in ('pmap', 'shard_map'):
    device_config.parallel = backend
    results[backend] = train.train_and_evaluate(device_config, str(tmp_path / backend), data_dir).variables
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), results['pmap'],
               results['shard_map'])


# ---------------------------------------------------------------------------------------------------------
# Several steps per dispatch.

@pytest.mark.parametrize('step,expected', [(0, 10), (40, 1), (44, 1), (45, 1), (50, 10), (95, 1), (140, 10),
                                           (148, 1)])
def test_a_call_ends_at_every_log_eval_and_checkpoint_step(config, step, expected):
  """Ten steps, or one where a log (every 50), eval (100), checkpoint (45) or the end (150) comes sooner."""
  config.num_train_steps, config.log_every_steps, config.eval_every_steps = 150, 50, 100
  config.checkpoint_every_steps = 45
  assert loop.chunk(step, 10, config) == expected


def _rows(workdir):
  import json
  return [{k: v for k, v in json.loads(line).items() if k not in ('time', 'steps_per_sec')}
          for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def test_ten_steps_per_call_train_as_one_step_per_call_and_resume_bitwise(device_config, data_dir, tmp_path):
  device_config.num_train_steps, device_config.log_every_steps, device_config.eval_every_steps = 30, 15, 30
  device_config.checkpoint_every_steps = 20
  runs = {}
  for k in (1, 10):
    device_config.steps_per_dispatch = k
    runs[k] = train.train_and_evaluate(device_config, str(tmp_path / f'k{k}'), data_dir)
  assert runs[10].run.steps_per_dispatch == 10 and runs[1].run.steps_per_dispatch == 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), runs[10].variables,
               runs[1].variables)
  one, ten = _rows(tmp_path / 'k1'), _rows(tmp_path / 'k10')
  assert [r.get('step') for r in ten] == [r.get('step') for r in one]  # the same rows at the same steps
  assert sorted(os.listdir(tmp_path / 'k10' / 'checkpoints')) == ['20', '30']
  resumed = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'k10', resumed)
  shutil.rmtree(resumed / 'checkpoints' / '30')
  assert train.train_and_evaluate(device_config, str(resumed), data_dir).start_step == 20
  jax.tree.map(np.testing.assert_array_equal, _checkpoint(str(resumed), 30), _checkpoint(str(tmp_path / 'k10'), 30))


def test_a_non_finite_loss_inside_a_call_names_its_own_step(device_config, data_dir, tmp_path):
  device_config.optimizer.name, device_config.optimizer.schedule = 'sgd', 'constant'
  device_config.optimizer.learning_rate, device_config.optimizer.grad_clip_norm = 1e30, 0.0
  device_config.steps_per_dispatch, device_config.log_every_steps = 10, 10
  with pytest.raises(errors.NonFiniteLoss, match=r'the training loss is (nan|inf) at step [2-9];'):
    train.train_and_evaluate(device_config, str(tmp_path), data_dir)


def test_several_steps_per_call_need_the_device_pipeline(config):
  from cnnjax.errors import ConfigError
  config.steps_per_dispatch = 4
  with pytest.raises(ConfigError, match='needs the data on the devices: set --config.data.pipeline=device'):
    train.validate(config, 8)
  config.data.pipeline = 'auto'
  train.validate(config, 8)
  config.num_train_steps, config.batch_size = 2**25, 128  # 2**32 examples: more than the positions count
  with pytest.raises(ConfigError, match='more than the device pipeline counts'):
    train.validate(config, 8)


def test_several_steps_per_call_are_refused_where_auto_chose_the_host_pipeline(config, data_dir, monkeypatch):
  from cnnjax.errors import ConfigError
  config.data.pipeline, config.steps_per_dispatch = 'auto', 4
  monkeypatch.setattr(data, 'DEVICE_MEMORY_SHARE', 0.0)  # nothing fits: auto chooses the host pipeline
  with pytest.raises(ConfigError, match=r'steps_per_dispatch=4 needs the device pipeline, and '
                                        r'--config.data.pipeline=auto chose the host one for shapes'):
    train.setup(config, data_dir)
  config.steps_per_dispatch = 'auto'
  run = train.setup(config, data_dir)
  assert (run.pipeline.name, run.steps_per_dispatch) == ('host', 1)
