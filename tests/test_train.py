"""Training: learning on shapes, the step against a plain grad + optax update, 8 devices == 1 device, exact
resume, no re-tracing, refused configs."""

import functools
import json
import os
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from cnnjax import parallel, train
from cnnjax.config import ConfigError, apply_overrides


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if 'step' in row]


def _checkpoint_params(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as manager:
    return manager.restore(step, args=ocp.args.StandardRestore())['params']


def test_training_on_shapes_learns(config, data_dir, tmp_path):
  config.model.variant = 'small'
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 150, 150, 150
  result = train.train_and_evaluate(config, str(tmp_path), data_dir)
  losses = [r['train_loss'] for r in _read_metrics(str(tmp_path)) if 'train_loss' in r]
  assert losses[-1] < 0.7 * losses[0]
  assert result.metrics['eval_accuracy'] > 0.5  # chance is 1/6
  assert result.metrics['num_params'] == 136614 and result.start_step == 0
  assert os.listdir(tmp_path / 'checkpoints') == ['150']
  jax.tree.map(np.testing.assert_array_equal, result.params, _checkpoint_params(str(tmp_path), 150))


def _three_steps_setup(config, data_dir):
  """The run, its fresh state and three global batches of 64 shaped [1, 64, ...]."""
  run = train.setup(config, data_dir)
  state = run.init_state(run.keys()[0])
  batches = run.train_batches(num_devices=1)
  return run, state, [next(batches) for _ in range(3)]


def _run_on_one_device(state, step, batches):
  """``step`` under pmap on a 1-device mesh, the whole batch on it: final params (host copies), last metrics."""
  one = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), (parallel.AXIS,))
  s, step_fn = parallel.replicate(state, one), jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None))
  for batch in batches:
    s, metrics = step_fn(s, parallel.shard(batch, one), jax.random.key(1))
  return jax.tree.map(lambda x: np.asarray(parallel.local_value(x)[0]), s.params), metrics


def _step(run, **kwargs):
  return functools.partial(train.train_step, head=run.head, learning_rate_fn=run.learning_rate_fn, **kwargs)


def test_train_step_equals_a_plain_grad_and_optax_update(config, data_dir):
  """Two steps of train_step on one device against jax.grad of the mean cross-entropy and an optax update
  written here (no dropout in the tiny model; the experiment's clipping, Adam at a constant rate)."""
  config.optimizer.schedule = 'constant'
  run, state, batches = _three_steps_setup(config, data_dir)
  params = jax.tree.map(parallel.local_value, state.params)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
  opt_state = tx.init(params)

  def loss_fn(params, images, labels):
    logits = run.model.apply({'params': params}, images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  for batch in batches[:2]:
    images, labels = batch['image'][0], batch['target'][0]
    want_loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  got, metrics = _run_on_one_device(state, _step(run, microbatch_size=0), batches[:2])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, params)
  np.testing.assert_allclose(parallel.first(metrics['loss']), want_loss, rtol=1e-5)
  np.testing.assert_allclose(parallel.first(metrics['grad_norm']), optax.global_norm(grads), rtol=1e-5)


@pytest.mark.parametrize('backend', parallel.BACKENDS)
def test_eight_devices_match_one_device_on_the_same_global_batch(config, data_dir, backend):
  run, state, batches = _three_steps_setup(config, data_dir)
  initial_kernel = np.array(parallel.local_value(state.params['block0']['kernel']))  # donation may free state
  want, ref_metrics = _run_on_one_device(state, _step(run), batches)

  mapped = parallel.get_backend(backend)  # all 8 devices, 8 examples each
  s, train_fn = mapped.from_checkpoint(state), mapped.map_train_step(_step(run))
  for batch in batches:
    s, metrics = train_fn(s, mapped.put_batch(jax.tree.map(lambda x: x.reshape(8, 8, *x.shape[2:]), batch)),
                          jax.random.key(1))
  got = jax.tree.map(parallel.local_value, mapped.to_checkpoint(s).params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)
  np.testing.assert_allclose(parallel.first(metrics['loss']), parallel.first(ref_metrics['loss']), rtol=1e-5)
  assert not np.allclose(got['block0']['kernel'], initial_kernel)  # it trained


@pytest.mark.parametrize('microbatch_size', [16, 32])
def test_micro_batches_give_the_whole_batch_step(config, data_dir, microbatch_size):
  run, state, batches = _three_steps_setup(config, data_dir)
  initial_kernel = np.array(parallel.local_value(state.params['block0']['kernel']))
  want, want_metrics = _run_on_one_device(state, _step(run), batches)
  got, got_metrics = _run_on_one_device(state, _step(run, microbatch_size=microbatch_size), batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  for k in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(parallel.first(got_metrics[k]), parallel.first(want_metrics[k]), rtol=1e-5)
  assert not np.allclose(got['block0']['kernel'], initial_kernel)  # it trained


def test_shard_map_backend_trains_end_to_end(config, data_dir, tmp_path):
  config.parallel, config.num_train_steps = 'shard_map', 10
  result = train.train_and_evaluate(config, str(tmp_path), data_dir)
  assert np.isfinite(result.metrics['eval_loss']) and os.listdir(tmp_path / 'checkpoints') == ['10']
  again = train.train_and_evaluate(config, str(tmp_path), data_dir)  # restores the replicated checkpoint layout
  assert again.start_step == 10
  jax.tree.map(np.testing.assert_array_equal, again.params, result.params)


def test_resume_equals_uninterrupted_run(config, data_dir, tmp_path):
  config.data.augment_flip = config.data.augment_crop = True
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, full, data_dir)  # checkpoints at 10 and 20
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))  # as if killed after step 10's checkpoint
  assert train.train_and_evaluate(config, resumed, data_dir).start_step == 10
  jax.tree.map(np.testing.assert_array_equal, _checkpoint_params(full, 20), _checkpoint_params(resumed, 20))


def test_train_step_is_traced_once(config, data_dir, tmp_path, monkeypatch):
  traces, original = [], train.train_step

  def counting_train_step(*args, **kwargs):
    traces.append(1)  # Python side effects run only while tracing
    return original(*args, **kwargs)

  monkeypatch.setattr(train, 'train_step', counting_train_step)
  train.train_and_evaluate(config, str(tmp_path), data_dir)
  assert len(traces) == 1


@pytest.mark.parametrize('head', ['binary', 'regression'])
def test_other_heads_train(config, data_dir, tmp_path, head):
  config.head, config.num_train_steps = head, 10
  metrics = train.train_and_evaluate(config, str(tmp_path), data_dir).metrics
  assert np.isfinite(metrics['eval_loss'])
  assert ('eval_accuracy' in metrics) == (head == 'binary') and ('eval_mae' in metrics) == (head == 'regression')


def test_one_step_end_to_end_on_mocked_mnist(config, tmp_path):
  config.data.name, config.num_train_steps = 'mnist', 1
  with tfds.testing.mock_data(num_examples=100):  # 100 test examples in one eval batch padded to 512
    metrics = train.train_and_evaluate(config, str(tmp_path / 'work'), str(tmp_path / 'data')).metrics
  correct = metrics['eval_accuracy'] * 100
  assert abs(correct - round(correct)) < 1e-4  # a mean over exactly the 100 real examples, padding masked
  assert [r['step'] for r in _read_metrics(str(tmp_path / 'work')) if 'train_loss' in r] == [1]


INVALID = [
    ({'batch_size': 100}, r'--config.batch_size=100 must be a positive multiple of the 8 devices; use e.g. '
                          r'--config.batch_size=96'),
    ({'microbatch_size': -1}, r'--config.microbatch_size=-1 must be >= 0'),
    ({'microbatch_size': 3}, r'--config.microbatch_size=3 must divide the per-device batch of 8 '
                             r'\(--config.batch_size=64 over 8 devices\); use e.g. --config.microbatch_size=2'),
    ({'model.stride': 0}, r'--config.model.stride=0 must be >= 1'),
    ({'model.features': (4, 4, 4, 4, 4, 4)}, r'block5.pool: pool window 2x2 is larger than its padded input 1x1'),
    ({'model.padding': 'VALID', 'model.kernel_size': 7, 'data.image_size': 16}, r'block1.conv: conv window 7x7'),
    ({'optimizer.name': 'lion'}, r"--config.optimizer.name='lion' is unknown"),
    ({'model.activation': 'swish2'}, r"--config.model.activation='swish2' is unknown"),
    ({'model.pool': 'median'}, r"--config.model.pool='median' is unknown"),
    ({'data.name': 'imagenet'}, r"--config.data.name='imagenet' is unknown"),
    ({'head': 'ranking'}, r"--config.head='ranking' is unknown"),
]


@pytest.mark.parametrize('overrides,message', INVALID)
def test_invalid_configs_are_refused_before_anything_is_written(config, data_dir, tmp_path, overrides, message):
  workdir = tmp_path / 'work'
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(apply_overrides(config, overrides), str(workdir), data_dir)
  assert not workdir.exists()
