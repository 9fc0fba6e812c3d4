"""Several budgets from one run (``--config.budgets``, with ``--config.optimizer.schedule=wsd``).

A warmup-stable-decay schedule is the same, up to its cooldown, whatever the number of steps is (Hägele et al.
2024). So the run of the longest budget (``num_train_steps``) trains at the constant rate and, at the step where a
shorter budget's cooldown would begin, hands its state to that budget's own run: a workdir of its own
(``WORKDIR/budget=<fraction>``) seeded with that state as its checkpoint and its config (``num_train_steps`` the
budget's). After the longest run ends, each shorter one resumes from its seed and trains its cooldown: the run
that a separate wsd run of that budget would be, step for step, with the same data and keys (tested bitwise), at
the cost of its cooldown only. Each is a whole run: periodic validation, its best-validation checkpoint where
asked, the test once, exact resume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from cnnjax import checkpointing, files, optim, parallel, workdirs
from cnnjax.config import ConfigError, is_number

PyTree = Any


def fractions(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The budgets as fractions of num_train_steps, ascending; () for a run of one budget."""
  return tuple(float(b) for b in config.budgets)


def steps(config: ml_collections.ConfigDict, fraction: float) -> int:
  """The steps of the budget ``fraction`` (of num_train_steps)."""
  return max(1, round(fraction * config.num_train_steps))


def shorter(config: ml_collections.ConfigDict) -> list[float]:
  """The budgets branched from the run: all but the longest (the run itself)."""
  return list(fractions(config)[:-1])


def branch_step(config: ml_collections.ConfigDict, fraction: float) -> int:
  """The step at which the budget ``fraction`` leaves the constant rate: where it branches from the run."""
  return optim.decay_start(config.optimizer, steps(config, fraction))


def branch_steps(config: ml_collections.ConfigDict) -> list[int]:
  """Where the loop must stop to hand a shorter budget its state (``loop.chunk``)."""
  return [branch_step(config, b) for b in shorter(config)]


def label(fraction: float) -> str:
  """'budget=0.25': a budget's name in workdirs and metric keys."""
  return f'budget={fraction:g}'


def branch_dir(workdir: str, fraction: float) -> str:
  return os.path.join(workdir, label(fraction))


def branch_config(config: ml_collections.ConfigDict, fraction: float) -> ml_collections.ConfigDict:
  """The config of the budget ``fraction``'s own run: num_train_steps its steps, no budgets of its own."""
  branch = config.copy_and_resolve_references()
  branch.num_train_steps, branch.budgets = steps(config, fraction), ()
  return branch


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for budgets that are not increasing fractions ending at 1, without a wsd schedule, that
  would branch inside the warm-up, or with a population (each budget is a run of its own); and for
  lr_pick=halving without a grid and budgets to halve over."""
  budgets = config.budgets
  if not isinstance(budgets, Sequence) or isinstance(budgets, str) or not all(
      is_number(b) and 0 < b <= 1 for b in budgets):
    raise ConfigError(f'--config.budgets={budgets!r} must be fractions of num_train_steps in (0, 1], e.g. '
                      '(0.25,0.5,1.0), or () for one budget')
  if config.lr_pick == 'halving' and (len(set(config.lr_grid)) < 2 or len(budgets) < 2):
    raise ConfigError('--config.lr_pick=halving picks a rate at each budget on the mean over the seeds: set '
                      '--config.lr_grid (2+ rates) and --config.budgets (2+ budgets, with '
                      '--config.optimizer.schedule=wsd)')
  if not budgets:
    return
  if list(budgets) != sorted(set(budgets)) or budgets[-1] != 1:
    raise ConfigError(f'--config.budgets={tuple(budgets)} must increase and end at 1.0 (the run itself), e.g. '
                      '(0.25,0.5,1.0)')
  if config.optimizer.schedule != 'wsd':
    raise ConfigError(f'--config.budgets branches shorter budgets from the constant phase of a warmup-stable-decay '
                      f'schedule; set --config.optimizer.schedule=wsd (not {config.optimizer.schedule})')
  early = [b for b in budgets if branch_step(config, b) < config.optimizer.warmup_steps]
  if early:
    step = branch_step(config, early[0])
    raise ConfigError(f'--config.budgets: the budget {early[0]:g} would branch at step {step}, inside the '
                      f'{config.optimizer.warmup_steps}-step warm-up; raise num_train_steps or the budget')
  if config.population == 'on':
    raise ConfigError('--config.budgets trains each budget as a run of its own; set --config.population=off or auto')


class Seeder:
  """Hook: at each shorter budget's branch step, writes the state as that budget's first checkpoint, with its
  config, into its workdir (unless it holds one already: a resumed run passes its branch steps again only when
  its own checkpoint came before them)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, backend: parallel.Backend):
    self.at = {branch_step(config, b): b for b in shorter(config)}
    self.config, self.workdir, self.backend = config, workdir, backend

  def __call__(self, at, state: PyTree, metrics) -> None:
    fraction = self.at.get(at.step)
    if fraction is None:
      return
    directory = branch_dir(self.workdir, fraction)
    checkpoints = checkpointing.Checkpoints(directory, keep=self.config.keep_checkpoints)
    with files.closing(checkpoints.close):
      if checkpoints.latest_step() is None:
        if jax.process_index() == 0:
          workdirs.write_config(branch_config(self.config, fraction), directory)
        checkpoints.save(at.step, self.backend.to_checkpoint(state))
