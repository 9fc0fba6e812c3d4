"""Configs: checks of field values, overrides, run-level checks.

This module imports only ``cnnjax.errors``, so every module can check its own fields with it:
``models`` for ``config.model``, ``data`` for ``config.data``, ``heads`` for ``config.head``, ``optim`` for
``config.optimizer``, ``parallel`` for ``config.parallel``, and ``validate_run`` here for the loop's own
fields. ``train.validate`` runs all of them; none builds a backend, reads data or writes anything.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import ml_collections

from cnnjax.errors import ConfigError

RNG_IMPLS = ('rbg', 'threefry2x32', 'unsafe_rbg')
POPULATION_MAPS = ('auto', 'vmap', 'loop')  # config.population_map
SPEEDUPS = ('auto', 'on', 'off')  # config.cpu_speedups (XLA:CPU's faster forms) and config.population
T = TypeVar('T')
LR_PICKS = ('run', 'point', 'halving')  # config.lr_pick: whose validation picks a sweep point's learning rate
TEST_CHECKPOINTS = ('last', 'best_val')  # config.test_checkpoint: the weights the test split evaluates


def check_choice(flag: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ConfigError unless ``value`` is one of ``choices``, naming ``--config.<flag>`` and the choices."""
  choices = sorted(choices)
  if isinstance(value, list | dict) or value not in choices:
    raise ConfigError(f'--config.{flag}={value!r} is unknown; choose one of {choices}')


def lookup(flag: str, name: str, registry: Mapping[str, T]) -> T:
  """``registry[name]``, or ConfigError naming ``--config.<flag>`` and the choices: the one look-up every registry
  (activations, pools, convs, filter banks, heads, datasets, variants) goes through."""
  check_choice(flag, name, registry)
  return registry[name]


def largest_divisor(n: int, at_most: int) -> int:
  """The largest divisor of ``n`` that is <= ``at_most`` (>= 1)."""
  return max(d for d in range(1, at_most + 1) if n % d == 0)


def is_int(value: Any) -> bool:
  """An int, and not a bool (which Python counts as one)."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A finite int or float, and not a bool."""
  return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_int(flag: str, value: Any, minimum: int) -> None:
  """Raises ConfigError unless ``value`` is an integer >= ``minimum``."""
  if not is_int(value) or value < minimum:
    raise ConfigError(f'--config.{flag}={value} must be an integer >= {minimum}')


def check_number(flag: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False, hint: str = '') -> None:
  """Raises ConfigError unless ``value`` is a finite number in [low, high] (an end excluded where it is open);
  ``hint`` ends the message (e.g. 'e.g. 0.001')."""
  ok = is_number(value) and (value > low if low_open else value >= low) and (
      value < high if high_open else value <= high)
  if not ok:
    bounds = f'> {low}' if low_open else f'>= {low}'
    if math.isfinite(high):
      bounds = f'in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    raise ConfigError(f'--config.{flag}={value} must be a finite number {bounds}{"; " + hint if hint else ""}')


def check_bool(flag: str, value: Any) -> None:
  """Raises ConfigError unless ``value`` is True or False."""
  if not isinstance(value, bool):
    raise ConfigError(f'--config.{flag}={value!r} must be True or False')


def check_str(flag: str, value: Any) -> None:
  """Raises ConfigError unless ``value`` is a string."""
  if not isinstance(value, str):
    raise ConfigError(f'--config.{flag}={value!r} must be a string')


def check_ints(flag: str, value: Any, minimum: int, example: str) -> None:
  """Raises ConfigError unless ``value`` is a tuple of integers >= ``minimum`` (``example`` shows one)."""
  if not isinstance(value, tuple | list) or not all(is_int(v) and v >= minimum for v in value):
    raise ConfigError(f'--config.{flag}={value!r} must be a tuple of integers >= {minimum}, e.g. '
                      f'--config.{flag}={example}')


# ---------------------------------------------------------------------------------------------------------
# Overrides and experiments.

def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-path overrides ({'model.stride': 2, ...}) set; 'name' is only a label.

  Raises:
    ConfigError for a path that is not a config field.
  """
  config = copy.deepcopy(config)  # keeps FieldReference types ('auto' or an int for microbatch_size)
  for path, value in overrides.items():
    if path == 'name':
      continue
    if not has_field(config, path):
      raise ConfigError(f'override {path!r} is not a config field')
    *parents, field = path.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[field] = value
  return config


def has_field(config: ml_collections.ConfigDict, path: str) -> bool:
  """Whether the dotted ``path`` ('model.stride') names a field of ``config``."""
  *parents, field = path.split('.')
  node: Any = config
  for parent in parents:
    node = node.get(parent) if isinstance(node, ml_collections.ConfigDict) else None
  return isinstance(node, ml_collections.ConfigDict) and field in node


# ---------------------------------------------------------------------------------------------------------
# The loop's own fields.

def validate_run(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks the fields the loop reads (batch sizes, step counts, micro-batches, seeds, PRNG, sweeps' fields).

  Args:
    config: the experiment config.
    num_devices: all devices taking part (global), which must divide the batch sizes.
  """
  check_int('seed', config.seed, 0)
  for flag in ('batch_size', 'eval_batch_size'):
    check_int(flag, config[flag], 1)
    if config[flag] % num_devices:
      raise ConfigError(f'--config.{flag}={config[flag]} must be a positive multiple of the {num_devices} devices; '
                        f'use e.g. --config.{flag}={max(1, round(config[flag] / num_devices)) * num_devices}')
  _validate_microbatch_size(config.microbatch_size, config.batch_size, num_devices)
  steps = config.steps_per_dispatch
  if steps != 'auto' and not (is_int(steps) and steps >= 1):
    raise ConfigError(f'--config.steps_per_dispatch={steps!r} must be auto or an integer >= 1')
  if steps != 'auto' and steps > 1 and config.data.pipeline == 'host':
    raise ConfigError(f'--config.steps_per_dispatch={steps} runs several steps in one program, which needs the data '
                      'on the devices: set --config.data.pipeline=device (or auto), or --config.steps_per_dispatch=1')
  check_choice('cpu_speedups', config.cpu_speedups, SPEEDUPS)
  check_choice('population', config.population, SPEEDUPS)
  check_choice('population_map', config.population_map, POPULATION_MAPS)
  for flag in ('num_train_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints', 'seeds'):
    check_int(flag, config[flag], 1)
  check_choice('rng_impl', config.rng_impl, RNG_IMPLS)
  for flag in ('skip_nonfinite', 'eval_flip'):
    check_bool(flag, config[flag])
  check_int('eval_translate', config.eval_translate, 0)
  check_str('baseline_point', config.baseline_point)
  check_int('analysis.invariance_shifts', config.analysis.invariance_shifts, 0)
  check_int('lr_grid_extensions', config.lr_grid_extensions, 0)
  check_choice('lr_pick', config.lr_pick, LR_PICKS)
  grid = config.lr_grid
  if not isinstance(grid, tuple | list) or not all(is_number(lr) and lr > 0 for lr in grid):
    raise ConfigError(f'--config.lr_grid={grid!r}: every learning rate must be a finite number > 0, e.g. '
                      '--config.lr_grid=(1e-3,3e-3,1e-2)')
  if grid and not config.data.val_fraction:
    raise ConfigError(f'--config.lr_grid={tuple(grid)} picks by the validation metric; set '
                      '--config.data.val_fraction > 0')
  check_choice('test_checkpoint', config.test_checkpoint, TEST_CHECKPOINTS)
  if config.test_checkpoint == 'best_val' and not config.data.val_fraction:
    raise ConfigError('--config.test_checkpoint=best_val picks by the validation metric; set '
                      '--config.data.val_fraction > 0 or --config.test_checkpoint=last')


def _validate_microbatch_size(size: int | str, batch_size: int, num_devices: int) -> None:
  if size == 'auto':
    return
  if not is_int(size) or size < 0:
    raise ConfigError(f'--config.microbatch_size={size!r} must be auto or an int >= 0 (0 = the whole per-device '
                      'batch at once)')
  per_device = batch_size // num_devices
  if 0 < size < per_device and per_device % size:
    divisor = largest_divisor(per_device, size - 1)
    raise ConfigError(f'--config.microbatch_size={size} must divide the per-device batch of {per_device} '
                      f'(--config.batch_size={batch_size} over {num_devices} device{"s" * (num_devices > 1)}); use '
                      f'e.g. --config.microbatch_size={divisor}, or 0 for no micro-batches')
