"""A learning rate picked on all of a setting's seeds at each budget (``--config.lr_pick=halving``).

Successive halving over the grid, on the budgets of a wsd run (``budgets``): every seed trains every rate up to
the shortest budget (its constant phase to that budget's branch step, then the budget's cooldown); the rate with
the best mean validation metric over the seeds is that budget's pick; the better half of the rates (at least one)
go on, each run resuming its constant phase, to the next budget, and so on to the longest. A pick on the grid's
edge at the shortest budget extends the grid (``sweep.next_learning_rate``), as a run's own pick does. Each seed's
result is its run at the longest budget's pick, with every shorter budget's metrics taken from that budget's pick.
Runs of the rates that drop out stop at their last budget, so the cost is about that of a lead seed's pick
(``lr_pick=point``) rather than seeds x rates whole runs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from cnnjax import budgets, heads, records, train
from cnnjax.config import apply_overrides
from cnnjax.errors import NonFiniteLoss

PICKED_BY = 'halving'  # records.LrPick.picked_by of a rate picked on the mean over seeds
Found = dict[tuple[str, float, float], train.TrainResult | None]  # (point, rate, budget) -> its run; None: diverged


def _at_budget(config: ml_collections.ConfigDict, directory: str, fraction: float, data_dir: str | None
               ) -> train.TrainResult | None:
  """The run of ``config`` (one rate) at the budget ``fraction``: its constant phase to that budget's branch step,
  then the budget's cooldown (the longest budget: the run itself, to its end); None where its loss diverged."""
  try:
    if fraction == budgets.fractions(config)[-1]:
      return train.train_and_evaluate(config, directory, data_dir)
    train.train_and_evaluate(config, directory, data_dir, until=budgets.branch_step(config, fraction))
    return train.train_and_evaluate(budgets.branch_config(config, fraction), budgets.branch_dir(directory, fraction),
                                    data_dir)
  except NonFiniteLoss as e:
    logging.warning('Learning rate %g diverged (%s); it counts as the worst.', config.optimizer.learning_rate,
                    str(e).split(';')[0])
    return None


def _one_rate(config: ml_collections.ConfigDict, lr: float) -> ml_collections.ConfigDict:
  """The config of one rate's run (no grid of its own)."""
  return apply_overrides(config, {'optimizer.learning_rate': lr, 'lr_grid': (), 'lr_pick': 'run'})


def _mean(runs: Sequence[train.TrainResult | None], key: str, sign: int) -> float:
  """The signed mean of ``key`` over the seeds' runs (higher is better); -inf where any diverged."""
  return -math.inf if any(r is None for r in runs) else sign * float(np.mean([r.metrics[key] for r in runs]))


def pick(configs: dict[str, ml_collections.ConfigDict], point_dirs: dict[str, str], data_dir: str | None,
         rate_dir: Callable[[float], str], next_rate: Callable[[Sequence[float], Sequence[float], float], float | None]
         ) -> dict[str, tuple[train.TrainResult, records.LrPick, float]]:
  """Picks one setting's rate at each budget on the mean over its seeds (``configs``: one per seed; each rate's
  run in ``point_dirs[name]``/``rate_dir(lr)``; ``next_rate``: the grid's extension past an edge).

  Returns:
    Per seed: its run at the longest budget's pick, with every budget's metrics ('budget=<f>/...') of that
    budget's pick and the pick itself ('budget=<f>/learning_rate'); the choice; the seconds its runs took.

  Raises:
    NonFiniteLoss where every rate diverged.
  """
  names, base = list(configs), next(iter(configs.values()))
  key, sign = heads.get_head(base.head).selection()
  grid = sorted(set(base.lr_grid))
  tried, alive, found, seconds, picks = list(grid), list(grid), {}, dict.fromkeys(names, 0.0), {}
  for k, fraction in enumerate(budgets.fractions(base)):
    while True:
      for name in names:
        for lr in alive:
          if (name, lr, fraction) not in found:
            start, trial = time.time(), _one_rate(configs[name], lr)
            earlier = [found[(name, lr, f)] for f in budgets.fractions(base)[:k]]
            found[(name, lr, fraction)] = None if None in earlier else _at_budget(
                trial, os.path.join(point_dirs[name], rate_dir(lr)), fraction, data_dir)
            seconds[name] += time.time() - start
      means = {lr: _mean([found[(n, lr, fraction)] for n in names], key, sign) for lr in alive}
      if max(means.values()) == -math.inf:
        raise NonFiniteLoss(f'every learning rate of {sorted(alive)} diverged at budget {fraction:g}; lower '
                            '--config.lr_grid')
      picks[fraction] = max(alive, key=lambda lr: (means[lr], -lr))  # a tie goes to the lower rate
      following = next_rate(grid, sorted(tried), picks[fraction]) if k == 0 else None
      if following is None or len(tried) - len(grid) >= base.lr_grid_extensions:
        break
      logging.info('Budget %g: learning rate %g is on the edge of %s; trying %g.', fraction, picks[fraction],
                   sorted(tried), following)
      tried, alive = [*tried, following], [*alive, following]
    alive = sorted(alive, key=lambda lr: (-means[lr], lr))[:max(1, math.ceil(len(alive) / 2))]
    logging.info('Budget %g: learning rate %g picked on the mean over %d seeds; going on with %s.', fraction,
                 picks[fraction], len(names), sorted(alive))
  return {name: _result(name, found, picks, key, sorted(tried), grid) + (seconds[name],) for name in names}


def _result(name: str, found: Found, picks: dict[float, float], key: str, tried: list[float], grid: list[float]
            ) -> tuple[train.TrainResult, records.LrPick]:
  """One seed's result: its run at the longest budget's pick, every budget's metrics from that budget's pick."""
  longest = max(picks)
  final = found[(name, picks[longest], longest)]
  metrics = dict(final.metrics)
  for fraction, lr in picks.items():
    run = found[(name, lr, fraction)]
    label = budgets.label(fraction)
    metrics.update({f'{label}/{k}': v for k, v in run.metrics.items() if k.startswith(('val_', 'test_'))})
    metrics[f'{label}/learning_rate'] = lr
  first = min(picks)
  scores = tuple(None if found[(name, lr, first)] is None else found[(name, lr, first)].metrics[key] for lr in tried)
  choice = records.LrPick(picks[longest], key, tuple(tried), scores,
                          len(tried) > 1 and picks[first] in (tried[0], tried[-1]), len(tried) - len(grid), PICKED_BY)
  return train.TrainResult(metrics, final.variables, final.start_step, final.run), choice
