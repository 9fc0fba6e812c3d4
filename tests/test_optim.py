"""Optimizers and schedules against their closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models, optim
from cnnjax.config import ConfigError


@pytest.mark.parametrize('name', optim.SCHEDULES)
def test_schedules_peak_at_one_and_follow_their_closed_forms(config, name):
  config.optimizer.schedule, config.optimizer.warmup_steps = name, 10
  shape = optim.schedule(config.optimizer, 110)
  want = {'constant': lambda t: 1.0,
          'cosine': lambda t: 0.5 * (1 + math.cos(math.pi * t / 110)),
          'warmup_cosine': lambda t: t / 10 if t < 10 else 0.5 * (1 + math.cos(math.pi * (t - 10) / 100)),
          'warmup_constant': lambda t: min(t / 10, 1.0),
          'triangular': lambda t: t / 10 if t < 10 else (110 - t) / 100,
          'wsd': lambda t: t / 10 if t < 10 else 1.0 if t < 88 else (110 - t) / 22}[name]  # cooldown 0.2 x 110
  for t in (0, 5, 10, 60, 99, 109):
    np.testing.assert_allclose(float(shape(t)), want(t), atol=1e-6)


def test_the_peak_learning_rate_is_optimizer_state_and_scales_the_step(config):
  """SGD's update is -lr * shape(step) * grad; the rate lives in the state, so it can change without a
  recompile."""
  config.optimizer.name, config.optimizer.schedule, config.optimizer.grad_clip_norm = 'sgd', 'constant', 0.0
  config.optimizer.learning_rate = 0.1
  shape = optim.schedule(config.optimizer, 10)
  tx = optim.create_tx(config, shape)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  updates, state = tx.update({'w': jnp.full(3, 2.0)}, state, params)
  np.testing.assert_allclose(updates['w'], -0.2)
  assert float(optim.learning_rate(state, shape, 0)) == pytest.approx(0.1)


def test_gradients_are_clipped_by_global_norm(config):
  config.optimizer.name, config.optimizer.schedule = 'sgd', 'constant'
  config.optimizer.learning_rate, config.optimizer.grad_clip_norm = 1.0, 1.0
  tx = optim.create_tx(config, optim.schedule(config.optimizer, 10))
  params = {'w': jnp.zeros(2)}
  updates, _ = tx.update({'w': jnp.array([3.0, 4.0])}, tx.init(params), params)  # norm 5 -> 1
  np.testing.assert_allclose(updates['w'], [-0.6, -0.8], rtol=1e-6)
  assert optax.global_norm(updates) == pytest.approx(1.0)


def test_bad_optimizer_settings_name_the_flag(config):
  config.optimizer.learning_rate = 0.0
  with pytest.raises(ConfigError, match='--config.optimizer.learning_rate'):
    optim.validate(config.optimizer)


def test_the_weights_moving_average_follows_its_recurrence(config):
  """ema_decay 0.5, SGD at 0.1 with gradient 1: the weights go 1, 0.9, 0.8, 0.7 and the average
  0.5 * previous + 0.5 * new goes 1, 0.95, 0.875, 0.7875; without it evaluations use the weights."""
  config.optimizer.name, config.optimizer.schedule, config.optimizer.grad_clip_norm = 'sgd', 'constant', 0.0
  config.optimizer.learning_rate, config.optimizer.ema_decay = 0.1, 0.5
  tx = optim.create_tx(config, optim.schedule(config.optimizer, 10))
  params = {'w': jnp.ones(2)}
  state = tx.init(params)
  for want in (0.95, 0.875, 0.7875):
    updates, state = tx.update({'w': jnp.ones(2)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(optim.eval_params(state, params)['w'], want, rtol=1e-6)
  np.testing.assert_allclose(params['w'], 0.7, rtol=1e-6)
  config.optimizer.ema_decay = 0.0
  plain = optim.create_tx(config, optim.schedule(config.optimizer, 10))
  assert optim.eval_params(plain.init(params), params) is params


def test_dense_max_norm_scales_each_hidden_units_weights_back_to_the_limit(config):
  """dense_max_norm 3, SGD at 1 with zero gradients: a hidden kernel whose columns have norms 5 (3, 4) and 1
  becomes (1.8, 2.4) and the unchanged column, as Keras's max_norm(3) would leave it; the output layer, biases
  and conv kernels are not constrained; with 0, nothing is."""
  config.optimizer.name, config.optimizer.schedule, config.optimizer.grad_clip_norm = 'sgd', 'constant', 0.0
  config.optimizer.learning_rate, config.optimizer.dense_max_norm = 1.0, 3.0
  long = jnp.array([[3.0, 1.0], [4.0, 0.0]])
  params = {'dense0': {'kernel': long, 'bias': jnp.full(2, 9.0)}, 'output': {'kernel': long},
            'block0': {'conv': {'kernel': long}}}
  tx = optim.create_tx(config, optim.schedule(config.optimizer, 10))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['dense0']['kernel'], [[1.8, 1.0], [2.4, 0.0]], rtol=1e-6)
  for path in (('dense0', 'bias'), ('output', 'kernel')):
    np.testing.assert_array_equal(new[path[0]][path[1]], params[path[0]][path[1]])
  np.testing.assert_array_equal(new['block0']['conv']['kernel'], long)
  config.optimizer.dense_max_norm = 0.0
  plain = optim.create_tx(config, optim.schedule(config.optimizer, 10))
  np.testing.assert_array_equal(optax.apply_updates(params, plain.update(
      jax.tree.map(jnp.zeros_like, params), plain.init(params), params)[0])['dense0']['kernel'], long)


def test_dense_max_norm_finds_the_models_hidden_dense_kernels_only(config):
  """In a real model's parameters (two hidden dense layers, BatchNorm after each), the constraint's pattern
  names dense0/kernel and dense1/kernel: not the output layer, the convs, the biases or the dense norms."""
  config.model.dense, config.model.dense_norm = (16, 8), 'batch'
  model = models.build_model(config.model, num_outputs=6)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  paths = [jax.tree_util.keystr(path, simple=True, separator='/')
           for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert sorted(p for p in paths if optim.HIDDEN_DENSE_KERNEL.search(p)) == ['dense0/kernel', 'dense1/kernel']


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_a_weight_decay_is_refused_where_the_optimizer_would_ignore_it(config, name):
  """Only adamw applies optimizer.weight_decay; elsewhere it would enter the run's identity and do nothing."""
  config.optimizer.name, config.optimizer.weight_decay = name, 1e-4
  if name in optim.DECAYING:
    optim.validate(config.optimizer)
  else:
    with pytest.raises(ConfigError, match=f'weight_decay=0.0001 does nothing under --config.optimizer.name={name}; '
                                          'use --config.optimizer.name=adamw'):
      optim.validate(config.optimizer)
  config.optimizer.weight_decay = 0.0
  optim.validate(config.optimizer)
