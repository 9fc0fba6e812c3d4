"""Optimizers and learning-rate schedules from ``config.optimizer``, built from optax."""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnnjax.config import check_bool, check_choice, check_int, check_number
from cnnjax.errors import ConfigError

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
DECAYING = ('adamw',)  # the optimizers that apply optimizer.weight_decay
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'warmup_constant', 'triangular', 'wsd')
MAX_SKIPPED_STEPS = 100  # skip_nonfinite: after this many consecutive non-finite steps, updates apply again


def validate(opt: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``--config.optimizer.*`` flag for settings that cannot train."""
  check_choice('optimizer.name', opt.name, OPTIMIZERS)
  check_choice('optimizer.schedule', opt.schedule, SCHEDULES)
  check_number('optimizer.learning_rate', opt.learning_rate, 0, low_open=True,
               hint='e.g. --config.optimizer.learning_rate=0.001')
  check_number('optimizer.momentum', opt.momentum, 0, 1, high_open=True, hint='e.g. --config.optimizer.momentum=0.9')
  check_int('optimizer.warmup_steps', opt.warmup_steps, 0)
  check_number('optimizer.cooldown_fraction', opt.cooldown_fraction, 0, 1, low_open=True,
               hint='the share of the steps wsd decays over; 0.2 is usual')
  for flag in ('weight_decay', 'grad_clip_norm'):
    check_number(f'optimizer.{flag}', opt[flag], 0)
  if opt.weight_decay and opt.name not in DECAYING:
    raise ConfigError(f'--config.optimizer.weight_decay={opt.weight_decay} does nothing under '
                      f'--config.optimizer.name={opt.name}; use --config.optimizer.name=adamw (decoupled weight decay) '
                      'or set --config.optimizer.weight_decay=0')
  check_bool('optimizer.nesterov', opt.nesterov)
  check_number('optimizer.ema_decay', opt.ema_decay, 0, 1, high_open=True, hint='e.g. 0.99, or 0 for none')
  check_number('optimizer.dense_max_norm', opt.dense_max_norm, 0, hint='e.g. 3 (Keras max_norm(3)), or 0 for none')


def schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The shape of ``config.optimizer``'s learning-rate schedule over ``num_steps``, peaking at 1: the rate at
  a step is this times the peak rate (``learning_rate``), which ``create_tx`` keeps in the optimizer state."""
  warmup = opt.warmup_steps
  if opt.schedule == 'constant':
    return optax.constant_schedule(1.0)
  if opt.schedule == 'cosine':
    return optax.cosine_decay_schedule(1.0, num_steps)
  if opt.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(num_steps, warmup + 1))
  if opt.schedule == 'triangular':  # up over the warm-up, then straight down to 0 at the end
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup),
                                 optax.linear_schedule(1.0, 0.0, max(num_steps - warmup, 1))], [warmup])
  if opt.schedule == 'wsd':  # warmup-stable-decay: up, constant, then straight down to 0 over the cooldown
    decay = decay_start(opt, num_steps)
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0),
                                 optax.linear_schedule(1.0, 0.0, num_steps - decay)], [warmup, decay])
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)], [warmup])


def decay_start(opt: ml_collections.ConfigDict, num_steps: int) -> int:
  """The step where a wsd schedule over ``num_steps`` leaves its constant rate: the last ``cooldown_fraction`` of
  the steps (at least one) decay to 0. Up to there, the schedule is the same whatever ``num_steps`` is, so a
  shorter budget's run can be branched from a longer one's state (``budgets``)."""
  return num_steps - max(1, round(opt.cooldown_fraction * num_steps))


def optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """sgd / momentum / adam / adamw following ``schedule``, after global-norm gradient clipping when
  grad_clip_norm > 0."""
  tx = {'sgd': lambda: optax.sgd(schedule),
        'momentum': lambda: optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov),
        'adam': lambda: optax.adam(schedule),
        'adamw': lambda: optax.adamw(schedule, weight_decay=opt.weight_decay)}[opt.name]()
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx) if opt.grad_clip_norm > 0 else tx


def create_tx(config: ml_collections.ConfigDict, shape: optax.Schedule) -> optax.GradientTransformation:
  """The run's optimizer, following ``shape`` times the peak learning rate; with config.skip_nonfinite, updates
  with non-finite gradients are skipped.

  The peak rate is a hyper-parameter in the optimizer state (``optax.inject_hyperparams``), not a constant of
  the compiled program: runs that differ only in learning rate (a sweep's lr_grid) or seed compile to the same
  program, which the persistent compilation cache then compiles once.
  """
  def make(learning_rate):
    tx = optimizer(config.optimizer, lambda count: learning_rate * shape(count))
    if config.optimizer.dense_max_norm:
      tx = optax.chain(tx, hidden_dense_max_norm(config.optimizer.dense_max_norm))
    if config.optimizer.ema_decay:
      tx = optax.chain(tx, params_ema(config.optimizer.ema_decay))
    return optax.apply_if_finite(tx, max_consecutive_errors=MAX_SKIPPED_STEPS) if config.skip_nonfinite else tx
  return optax.inject_hyperparams(make)(learning_rate=config.optimizer.learning_rate)


HIDDEN_DENSE_KERNEL = re.compile(r'(^|/)dense\d+/kernel$')  # models.CNN's hidden dense layers, not its output


def hidden_dense_max_norm(limit: float) -> optax.GradientTransformation:
  """Keras's ``max_norm(limit)`` kernel constraint on the hidden dense layers: after each update, every hidden
  unit's incoming weights (a column of a ``dense<i>`` kernel) longer than ``limit`` are scaled back to it. The
  update returned is the one that lands the parameters there, so the chain after it (the EMA) sees the
  constrained weights."""
  def project(path, update, param):
    if not HIDDEN_DENSE_KERNEL.search(jax.tree_util.keystr(path, simple=True, separator='/')):
      return update
    new = param + update
    norms = jnp.sqrt(jnp.sum(jnp.square(new), axis=0, keepdims=True))
    return new * jnp.minimum(1.0, limit / jnp.maximum(norms, jnp.finfo(new.dtype).tiny)) - param

  def update(updates, state, params=None):
    return jax.tree_util.tree_map_with_path(project, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class ParamsEMAState(NamedTuple):
  ema: optax.Params


def params_ema(decay: float) -> optax.GradientTransformation:
  """Passes updates through and keeps, in its state, an exponential moving average of the parameters they
  produce: ema <- decay * ema + (1 - decay) * (params + updates), from the initial parameters (no bias
  correction). Evaluations use it (``eval_params``): averaged weights generalise better late in training."""
  def init(params):
    return ParamsEMAState(ema=jax.tree.map(lambda p: p.copy(), params))

  def update(updates, state, params=None):
    new = optax.apply_updates(params, updates)
    return updates, ParamsEMAState(ema=jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new))

  return optax.GradientTransformation(init, update)


def eval_params(opt_state: optax.OptState, params: optax.Params) -> optax.Params:
  """The parameters evaluations use: the optimizer's moving average (``params_ema``) where it keeps one, else
  ``params``."""
  ema = optax.tree_utils.tree_get(opt_state, 'ema')
  return params if ema is None else ema


def learning_rate(opt_state: optax.OptState, shape: optax.Schedule, step) -> float:
  """The learning rate ``create_tx``'s optimizer applies at ``step``."""
  return opt_state.hyperparams['learning_rate'] * shape(step)


def with_learning_rate(opt_state: optax.OptState, peak: float) -> optax.OptState:
  """``create_tx``'s optimizer state with the peak learning rate ``peak``: the state that ``create_tx`` of a config
  with that rate would have initialised (the rate is stored, in its dtype, and nothing else depends on it)."""
  rate = opt_state.hyperparams['learning_rate']
  return opt_state._replace(hyperparams={**opt_state.hyperparams,
                                         'learning_rate': np.asarray(peak, np.asarray(rate).dtype)})
