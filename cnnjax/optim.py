"""Optimizers and learning-rate schedules from ``config.optimizer``, built from optax."""

from __future__ import annotations

import math

import ml_collections
import optax

from cnnjax.config import ConfigError, check_choice

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'warmup_constant')
MAX_SKIPPED_STEPS = 100  # skip_nonfinite: after this many consecutive non-finite steps, updates apply again


def validate(opt: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``--config.optimizer.*`` flag for settings that cannot train."""
  check_choice('optimizer.name', opt.name, OPTIMIZERS)
  check_choice('optimizer.schedule', opt.schedule, SCHEDULES)
  if not (math.isfinite(opt.learning_rate) and opt.learning_rate > 0):
    raise ConfigError(f'--config.optimizer.learning_rate={opt.learning_rate} must be a finite number > 0, e.g. '
                      '--config.optimizer.learning_rate=0.001')
  if not 0 <= opt.momentum < 1:
    raise ConfigError(f'--config.optimizer.momentum={opt.momentum} must be in [0, 1), e.g. '
                      '--config.optimizer.momentum=0.9')
  for flag in ('warmup_steps', 'weight_decay', 'grad_clip_norm'):
    if not (math.isfinite(opt[flag]) and opt[flag] >= 0):
      raise ConfigError(f'--config.optimizer.{flag}={opt[flag]} must be a finite number >= 0')


def learning_rate_fn(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning-rate schedule of ``config.optimizer`` over ``num_steps``."""
  lr, warmup = opt.learning_rate, opt.warmup_steps
  if opt.schedule == 'constant':
    return optax.constant_schedule(lr)
  if opt.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, num_steps)
  if opt.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """sgd / momentum / adam / adamw, after global-norm gradient clipping when grad_clip_norm > 0."""
  tx = {'sgd': lambda: optax.sgd(schedule),
        'momentum': lambda: optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov),
        'adam': lambda: optax.adam(schedule),
        'adamw': lambda: optax.adamw(schedule, weight_decay=opt.weight_decay)}[opt.name]()
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx) if opt.grad_clip_norm > 0 else tx


def create_tx(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The run's optimizer; with config.skip_nonfinite, updates with non-finite gradients are skipped."""
  tx = optimizer(config.optimizer, schedule)
  return optax.apply_if_finite(tx, max_consecutive_errors=MAX_SKIPPED_STEPS) if config.skip_nonfinite else tx
