"""Sweeps: an experiment's ``get_sweep()`` lists config overrides; each point trains in WORKDIR/<point name>.

A point is done when its ``result.json`` exists, so re-running a sweep resumes it (an unfinished point resumes
from its checkpoints), ``--sweep_index=i`` runs point i alone (one task of a cluster array job), and the report
is rebuilt from whatever points are finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cnnjax import (
  analysis,
  checkpointing,
  files,
  halving,
  heads,
  population,
  records,
  report,
  stamp,
  train,
  workdirs,
)
from cnnjax.config import apply_overrides, check_int
from cnnjax.errors import (
  CnnjaxError,
  ConfigError,
  DamagedFile,
  NoFinishedPoints,
  NonFiniteLoss,
  PickFailed,
  Preempted,
  StorageError,
  WorkdirInUse,
)

Overrides = dict[str, Any]
RESULT_FILE = 'result.json'  # a point is done when it exists
EVAL_SAMPLE = 1024  # test examples a point's analysis (shift invariance, first-layer maps) looks at
SINGLE_POINT = 'base'  # the point of an experiment without a sweep run over seeds or learning rates


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep: a name (its directory), the name of the setting it is a seed of (the report's row),
  and the overrides applied to the base config."""
  name: str
  group: str
  overrides: Overrides


def point_name(overrides: Overrides) -> str:
  """A directory-safe name: the 'name' override, else 'field=value' pairs joined with commas."""
  if 'name' in overrides:
    name = str(overrides['name'])
  else:
    name = ','.join(f'{k.rpartition(".")[2]}={_format(v)}' for k, v in overrides.items())
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', name) or 'base'


def _format(value: Any) -> str:
  return '-'.join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def expand(sweep: Sequence[Overrides], seeds: int, base_seed: int) -> list[Point]:
  """The points of a sweep, each repeated over ``seeds`` seeds (base_seed, base_seed + 1, ...)."""
  points = []
  for overrides in sweep:
    name = point_name(overrides)
    for i in range(seeds):
      extra = {'seed': base_seed + i} if seeds > 1 else {}
      run = records.RunName(name, base_seed + i if extra else None).run
      points.append(Point(run, name, {**overrides, **extra}))
  if len({p.name for p in points}) != len(points):
    raise ConfigError('two sweep points have the same name; give them distinct "name" overrides')
  return points


# ---------------------------------------------------------------------------------------------------------
# Running points.

def finish_point(config: ml_collections.ConfigDict, point: Point, point_dir: str, trained: train.TrainResult,
                 choice: records.LrPick | None, wall_time: float) -> records.RunResult:
  """Analyses a trained point (its pick's run, with an lr_grid: ``choice`` says which) and writes
  ``point_dir``/result.json (a sweep's WORKDIR/<name>, or a single run's workdir)."""
  run, variables = trained.run, trained.variables
  layers = analysis.analyze(config.model, run.info.image_shape, run.info.num_outputs)
  history = read_metrics(_run_dir(point_dir, choice))
  train_rows = [r for r in history if 'train_loss' in r]
  speeds = [r['steps_per_sec'] for r in history if 'steps_per_sec' in r]
  metrics = {k: v for k, v in trained.metrics.items() if k not in ('num_params', 'selected_step')}
  images, targets = run.pipeline.sample('test', EVAL_SAMPLE)
  invariance = None
  if config.analysis.invariance_shifts and config.head == 'multiclass':
    invariance = analysis.shift_invariance(run.model.apply, variables, images, targets,
                                           config.analysis.invariance_shifts)
  result = records.RunResult(
      point.name, point.group, point.overrides, config.seed,
      {**metrics, **{k: v for k, v in train_rows[-1].items() if k.startswith('train_')}},
      trained.metrics['num_params'], analysis.totals(layers)['flops'],
      statistics.median(speeds) if speeds else float('nan'), wall_time, trained.metrics.get('selected_step'), choice,
      invariance)
  if jax.process_index() == 0:
    if run.model.blocks:
      filters, maps = analysis.first_layer_maps(run.model, variables, images[0])
      np.savez(os.path.join(point_dir, report.FIRST_LAYER_FILE), filters=filters, maps=maps, image=images[0])
    files.write_json(os.path.join(point_dir, RESULT_FILE), result.to_json())
  return result


def run_points(configs: dict[str, ml_collections.ConfigDict], points: Sequence[Point], workdir: str,
               data_dir: str | None, lead: Point) -> None:
  """Trains the unfinished ``points`` (seeds of one setting), picks each one's learning rate
  (``pick_learning_rates``) and writes each one's result.json. Where ``population.population_on`` says so, the runs
  of each round (every seed x learning rate; then the grids' extensions) train as one population.

  With ``lr_pick='point'`` and a grid, ``lead`` (the setting's first seed, whether or not among ``points``) picks
  from the grid, trained first if unfinished, and the other seeds train at its pick only."""
  pending = []
  for point in points:
    if os.path.exists(os.path.join(workdir, point.name, RESULT_FILE)):
      logging.info('Sweep point %s is done; skipping.', point.name)
    else:
      pending.append(point)
  if not pending:
    return
  for point in pending:
    logging.info('Sweep point %s: %s', point.name, point.overrides)
  if configs[lead.name].lr_pick == 'halving':  # every seed of the setting: the pick is on their mean
    picks = halving.pick({p.name: configs[p.name] for p in points},
                         {p.name: os.path.join(workdir, p.name) for p in points}, data_dir, _lr_dir, next_learning_rate)
    for point in pending:
      trained, choice, seconds = picks[point.name]
      finish_point(configs[point.name], point, os.path.join(workdir, point.name), trained, choice, seconds)
    return
  together = population.population_on(configs[pending[0].name], jax.default_backend())
  trainer = functools.partial(_train_together, workdir=workdir) if together else _train_alone
  trainer = functools.partial(trainer, data_dir=data_dir)
  shared = None
  if configs[lead.name].lr_pick == 'point' and configs[lead.name].lr_grid:
    picked = lead_pick(configs, lead, workdir, trainer)
    pending = [p for p in pending if p != lead]
    configs = {**configs, **{p.name: apply_overrides(configs[p.name], {'lr_grid': (picked,)}) for p in pending}}
    shared = lead.name
    if pending:
      logging.info('Learning rate %g, picked by %s, for %s.', picked, lead.name, ', '.join(p.name for p in pending))
  _train_points(configs, pending, workdir, trainer, shared)


PICK_FAILED = 'pick_failed.txt'  # in a lead's point directory: why its pick failed, for the tasks waiting on it
PICK_POLL_S = 2.0  # how often a task waiting on its lead's pick looks again


def lead_pick(configs: dict[str, ml_collections.ConfigDict], lead: Point, workdir: str, trainer: Callable) -> float:
  """The learning rate ``lead`` picks for its setting's seeds (``lr_pick='point'``). One task at a time trains
  the lead's grid, holding the lock of the lead's point directory: the lead's own task or, if that has not
  started, the first seed's task to come; the others wait for its result.json, saying so once, and look again
  every ``PICK_POLL_S`` seconds (a holder that dies releases the lock, and the next task resumes the lead from
  its checkpoints). A pick that fails stops every task waiting on it in one line.

  Raises:
    CnnjaxError from training the lead; PickFailed where another task's training of it failed meanwhile.
  """
  lead_dir = os.path.join(workdir, lead.name)
  result, failed = os.path.join(lead_dir, RESULT_FILE), os.path.join(lead_dir, PICK_FAILED)
  if jax.process_count() > 1:  # the processes of one multi-host task train the lead together, as any run
    if not os.path.exists(result):
      _train_points(configs, [lead], workdir, trainer)
    return load_result(lead_dir).lr.picked
  started, waiting = time.time(), False
  while not os.path.exists(result):
    if os.path.exists(failed) and os.path.getmtime(failed) >= started:  # failed while this task waited
      raise PickFailed(f'{lead.name} picks the learning rate for {lead.group}\'s seeds and failed: '
                       f'{files.read_text(failed)}')
    try:
      with workdirs.WorkdirLock(lead_dir):
        if not os.path.exists(result):
          _train_lead(configs, lead, workdir, trainer, failed)
    except WorkdirInUse as e:
      if not waiting:
        logging.info('Waiting for %s to pick the learning rate (%s trains it; looking again every %g s).', lead.name,
                     getattr(e, 'holder', 'another process'), PICK_POLL_S)
        waiting = True
      time.sleep(PICK_POLL_S)
  return load_result(lead_dir).lr.picked


def _train_lead(configs: dict[str, ml_collections.ConfigDict], lead: Point, workdir: str, trainer: Callable,
                failed: str) -> None:
  """Trains the lead's grid and writes its result.json; a failure is left in ``failed`` for the waiting tasks."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(failed)
  try:
    _train_points(configs, [lead], workdir, trainer)
  except CnnjaxError as e:
    if not isinstance(e, Preempted):  # a preempted lead resumes when its task is requeued
      files.write_text(failed, str(e))
    raise


def _train_points(configs: dict[str, ml_collections.ConfigDict], points: Sequence[Point], workdir: str,
                  trainer: Callable, picked_by: str | None = None) -> None:
  """Trains ``points`` over their grids, picks each one's rate and writes each one's result.json (``picked_by``:
  the lead whose pick their one-rate grids hold, under lr_pick=point)."""
  if not points:
    return
  picks = pick_learning_rates({p.name: configs[p.name] for p in points},
                              {p.name: os.path.join(workdir, p.name) for p in points}, trainer)
  for point in points:
    trained, choice, seconds = picks[point.name]
    choice = choice and dataclasses.replace(choice, picked_by=picked_by)
    finish_point(configs[point.name], point, os.path.join(workdir, point.name), trained, choice, seconds)


Trial = tuple[ml_collections.ConfigDict, str, float | None]  # (config, workdir, learning rate or None: no grid)


def _train_alone(trials: Sequence[Trial], data_dir: str | None) -> list[tuple[train.TrainResult | None, float]]:
  """Each trial trained (or resumed) by itself: (its result, None where a grid's rate diverged; seconds)."""
  outcomes = []
  for config, directory, lr in trials:
    start = time.time()
    trained = (train.train_and_evaluate(config, directory, data_dir) if lr is None
               else _train_or_diverge(config, directory, data_dir))
    outcomes.append((trained, time.time() - start))
  return outcomes


POPULATIONS_DIR = '.populations'  # in a sweep's workdir: the checkpoints of populations in training


def _train_together(trials: Sequence[Trial], data_dir: str | None, workdir: str
                    ) -> list[tuple[train.TrainResult | None, float]]:
  """The unfinished trials trained as one population (``population.train_population``), whose checkpoints live in
  WORKDIR/.populations/<members' hash> until every member's final checkpoint is in its own workdir; then each
  trial resumed alone, which evaluates it (a diverged member of a grid: None). The population's time is shared
  equally among its members."""
  todo = [i for i, (config, directory, _) in enumerate(trials)
          if not checkpointing.has_step(directory, config.num_train_steps)]
  finished, share = [True] * len(trials), 0.0
  if len(todo) > 1:
    start = time.time()
    members = [trials[i] for i in todo]
    digest = hashlib.sha256('\n'.join(d for _, d, _ in members).encode()).hexdigest()[:12]
    population_dir = os.path.join(workdir, POPULATIONS_DIR, digest)
    trained = population.train_population([c for c, _, _ in members], [d for _, d, _ in members],
                                          population_dir, data_dir)
    for i, done in zip(todo, trained.finished, strict=True):
      finished[i] = done
    if jax.process_index() == 0:
      shutil.rmtree(population_dir)
    share = (time.time() - start) / len(todo)
  outcomes = []
  for i, trial in enumerate(trials):
    skip = not finished[i] and trial[2] is not None  # a grid's diverged rate: the worst, as alone
    trained, seconds = (None, 0.0) if skip else _train_alone([trial], data_dir)[0]
    outcomes.append((trained, seconds + share * (i in todo)))
  return outcomes


def pick_learning_rates(configs: dict[str, ml_collections.ConfigDict], point_dirs: dict[str, str],
                        trainer: Callable[[Sequence[Trial]], list[tuple[train.TrainResult | None, float]]]
                        ) -> dict[str, tuple[train.TrainResult, dict[str, Any], float]]:
  """Trains each point once per learning rate of its ``lr_grid`` (in POINT_DIR/lr=<value>/; without a grid, once,
  in POINT_DIR) and picks the rate with the best validation metric. While a pick lies on the edge of the rates
  tried, the next rate beyond that edge is trained too (``next_learning_rate``), up to ``lr_grid_extensions``
  times, so that a pick is interior or said to be still on the edge. A rate whose loss becomes NaN/Inf counts
  as the worst. Each round's trials, over all points, go to ``trainer`` together.

  Returns:
    Per point: the pick's run, the choice (``records.LrPick``; None without a grid) and the seconds its trials
    took.
  """
  scores: dict[str, dict[float, float | None]] = {name: {} for name in configs}
  best: dict[str, tuple[float | None, train.TrainResult]] = {}
  seconds = dict.fromkeys(configs, 0.0)
  todo = {name: sorted(set(c.lr_grid)) or [None] for name, c in configs.items()}
  while todo:
    trials = [(name, lr) for name, rates in todo.items() for lr in rates]
    outcomes = trainer([_trial(configs[name], point_dirs[name], lr) for name, lr in trials])
    for (name, lr), (trained, spent) in zip(trials, outcomes, strict=True):
      seconds[name] += spent
      if lr is None:
        best[name] = (None, trained)
        continue
      key, sign = heads.get_head(configs[name].head).selection()
      scores[name][lr] = None if trained is None else trained.metrics[key]
      if trained is not None and _better(sign * trained.metrics[key], lr, best.get(name), key, sign):
        best[name] = (lr, trained)
    todo = {}
    for name in dict.fromkeys(name for name, lr in trials if lr is not None):
      if name not in best:
        raise NonFiniteLoss(f'every learning rate of {sorted(scores[name])} diverged; lower --config.lr_grid')
      grid, tried = configs[name].lr_grid, sorted(scores[name])
      following = next_learning_rate(grid, tried, best[name][0])
      if following is not None and len(tried) - len(set(grid)) < configs[name].lr_grid_extensions:
        logging.info('%s: learning rate %g is on the edge of %s; trying %g.', name, best[name][0], tried, following)
        todo[name] = [following]
  return {name: (best[name][1], _choice(scores[name], best[name][0], configs[name], best[name][1]), seconds[name])
          for name in configs}


def _trial(config: ml_collections.ConfigDict, point_dir: str, lr: float | None) -> Trial:
  if lr is None:
    return config, point_dir, None
  return (apply_overrides(config, {'optimizer.learning_rate': lr, 'lr_grid': ()}), os.path.join(point_dir, _lr_dir(lr)),
          lr)


def _better(score: float, lr: float, current: tuple[float, train.TrainResult] | None, key: str, sign: int) -> bool:
  """Whether ``score`` (signed: higher is better) at ``lr`` beats the current pick; a tie goes to the lower rate."""
  if current is None:
    return True
  other = sign * current[1].metrics[key]
  return score > other or (score == other and lr < current[0])


def _choice(scores: dict[float, float | None], picked: float | None, config: ml_collections.ConfigDict,
            trained: train.TrainResult) -> records.LrPick | None:
  """What a point's result.json says of its learning-rate pick (None without a grid)."""
  if picked is None:
    return None
  key, _ = trained.run.head.selection()
  grid = tuple(sorted(scores))
  return records.LrPick(picked, key, grid, tuple(scores[lr] for lr in grid),
                        len(grid) > 1 and picked in (grid[0], grid[-1]), len(grid) - len(set(config.lr_grid)))


def next_learning_rate(grid: Sequence[float], tried: Sequence[float], picked: float) -> float | None:
  """The learning rate to try next when ``picked`` lies on the edge of ``tried`` (``grid`` and its extensions):
  one step of ``grid``'s mean ratio beyond that edge, counted from ``grid``'s own edge so that the values stay
  round (1e-3, 3e-3, 1e-2 extends to 0.0316, then 0.1); None for an interior pick or a grid of one value."""
  grid, tried = sorted(grid), sorted(tried)
  if len(grid) < 2 or picked not in (tried[0], tried[-1]):
    return None
  ratio = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1))
  if picked == tried[-1]:
    value = grid[-1] * ratio ** (1 + sum(lr > grid[-1] for lr in tried))
  else:
    value = grid[0] / ratio ** (1 + sum(lr < grid[0] for lr in tried))
  return float(f'{value:.3g}')


def _train_or_diverge(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None
                      ) -> train.TrainResult | None:
  """``train.train_and_evaluate``, or None (with one warning) when the training loss becomes NaN/Inf."""
  try:
    return train.train_and_evaluate(config, workdir, data_dir)
  except NonFiniteLoss as e:
    logging.warning('Learning rate %g diverged (%s); it counts as the worst of the grid.',
                    config.optimizer.learning_rate, str(e).split(';')[0])
    return None


def _lr_dir(lr: float) -> str:
  return records.RunName('', lr=lr).lr_dir


def _run_dir(point_dir: str, pick: records.LrPick | None) -> str:
  """The directory of the run a point's result reports: the picked learning rate's, with a grid."""
  return point_dir if pick is None else os.path.join(point_dir, _lr_dir(pick.picked))


def read_metrics(run_dir: str) -> list[dict[str, float]]:
  """The rows of a run's metrics.jsonl that carry a step (damaged lines are skipped with one warning)."""
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  rows, damaged = files.read_jsonl(path)
  files.warn_damaged_lines(path, damaged)
  return [row for row in rows if 'step' in row]


def load_result(point_dir: str) -> records.RunResult:
  """A finished point's result.json.

  Raises:
    DamagedFile naming the file and the fix, for one that is cut, not JSON or not a run's record.
  """
  path = os.path.join(point_dir, RESULT_FILE)
  fix = f'move it away and run the sweep again: the point resumes from its checkpoints and writes {RESULT_FILE} anew'
  try:
    return records.RunResult.from_json(files.read_json(path, fix))
  except (KeyError, TypeError, ValueError) as e:
    raise DamagedFile(f'{path} is not a run\'s record ({e}); {fix}') from None


# ---------------------------------------------------------------------------------------------------------
# The experiment entry point.

def _validated_points(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]],
                      sweep_index: int | None) -> tuple[list[Point], dict[str, ml_collections.ConfigDict]]:
  """The sweep's points and each one's config, every one validated (pure: nothing is read or written).

  Raises:
    ConfigError naming the point and the flag.
  """
  check_int('seeds', config.seeds, 1)  # what expand() reads; the rest is validated point by point below
  check_int('seed', config.seed, 0)
  points = expand(get_sweep(), config.seeds, config.seed)
  groups = list(dict.fromkeys(p.group for p in points))
  if config.baseline_point and config.baseline_point not in groups:
    raise ConfigError(f'--config.baseline_point={config.baseline_point!r} is not a point of this sweep; choose one '
                      f'of {groups} (or \'\' for the first)')
  if sweep_index is not None and config.lr_pick == 'halving':
    raise ConfigError('--config.lr_pick=halving picks on the mean over a setting\'s seeds, which train together in '
                      'one task: drop --sweep_index, or use --config.lr_pick=point')
  if sweep_index is not None and not 0 <= sweep_index < len(points):
    raise ConfigError(f'--sweep_index={sweep_index} is out of range: this sweep has {len(points)} points '
                      f'(0..{len(points) - 1})')
  configs = {}
  for p in points:
    try:
      configs[p.name] = apply_overrides(config, p.overrides)
      train.validate(configs[p.name], jax.device_count())
    except ConfigError as e:
      raise ConfigError(f'sweep point {p.name}: {e}') from None
  return points, configs


def validate_experiment(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]] | None,
                        sweep_index: int | None = None, report_only: bool = False) -> None:
  """Raises the ConfigError that ``run_experiment`` would, before anything is logged, read or written."""
  get_sweep = sweep_of(config, get_sweep)
  if get_sweep:
    _validated_points(config, get_sweep, sweep_index)
  else:
    _check_single_run(sweep_index, report_only)
    train.validate(config, jax.device_count())


def _check_single_run(sweep_index: int | None, report_only: bool) -> None:
  """Raises ConfigError for the sweep-only flags on an experiment without a sweep."""
  if sweep_index is not None or report_only:
    raise ConfigError('this experiment has no get_sweep(); drop --sweep_index/--report_only (or set '
                      '--config.seeds > 1 to repeat it over seeds)')


def run(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]], workdir: str,
        data_dir: str | None = None, sweep_index: int | None = None, report_only: bool = False,
        overwrite: bool = False) -> list[Point]:
  """Runs a sweep (all points, or only ``sweep_index``), then writes the report of the finished points.

  Every point's config is validated before anything is trained or written; ``overwrite`` then moves a
  previous sweep in ``workdir`` aside.

  Returns:
    The sweep's points.
  """
  workdir = workdirs.resolve(workdir)
  points, configs = _validated_points(config, get_sweep, sweep_index)
  if overwrite and not report_only:
    workdirs.move_aside(workdir)
  if not report_only:
    todo = [p for i, p in enumerate(points) if sweep_index is None or i == sweep_index]
    for group in dict.fromkeys(p.group for p in todo):
      run_points(configs, [p for p in todo if p.group == group], workdir, data_dir,
                 lead=next(p for p in points if p.group == group))
  if sweep_index is None and jax.process_index() == 0:
    done = [p for p in points if os.path.exists(os.path.join(workdir, p.name, RESULT_FILE))]
    if not done:
      raise NoFinishedPoints(f'no finished sweep points in {workdir} to report; run the sweep (without --report_only) '
                             'or point --workdir at the sweep\'s directory')
    results = [load_result(os.path.join(workdir, p.name)) for p in done]
    report.write(workdir, results, {r.name: read_metrics(_run_dir(os.path.join(workdir, r.name), r.lr))
                                    for r in results}, config.baseline_point)
    logging.info('Report: %s (%d of %d points finished).', os.path.join(workdir, 'report.md'), len(done),
                 len(points))
  return points


def list_points(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]] | None) -> str:
  """``--list_points``: the sweep's points, one a line (line i is --sweep_index=i), each lead seed marked: under
  lr_pick=point its task picks the learning rate that its setting's other seeds' tasks wait for."""
  get_sweep = sweep_of(config, get_sweep)
  if not get_sweep:
    return ''
  points, lines = expand(get_sweep(), config.seeds, config.seed), []
  for point in points:
    lead = next(p for p in points if p.group == point.group)
    point_config = apply_overrides(config, point.overrides)
    leads = point == lead and point_config.lr_pick == 'point' and point_config.lr_grid and config.seeds > 1
    lines.append(f'{point.name}  (lead: picks the learning rate for its other seeds)' if leads else point.name)
  return '\n'.join(lines)


def sweep_of(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]] | None
             ) -> Callable[[], list[Overrides]] | None:
  """The experiment's sweep: its ``get_sweep``; or, for an experiment without one whose config sets a sweep's
  fields (seeds other than 1, an lr_grid, a baseline_point), a sweep of one point, the config as it is, so that
  those fields are honoured rather than ignored; else None (a single run)."""
  if get_sweep or (config.seeds == 1 and not config.lr_grid and not config.baseline_point):
    return get_sweep
  return lambda: [{'name': SINGLE_POINT}]


def run_experiment(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]] | None, workdir: str,
                   data_dir: str | None = None, sweep_index: int | None = None, report_only: bool = False,
                   overwrite: bool = False) -> list[Point] | train.TrainResult:
  """Runs an experiment as launch.py does: its sweep (see ``sweep_of``) with ``run``, or a single run with
  ``train.train_and_evaluate``.

  Raises:
    ConfigError for --sweep_index or --report_only without a sweep, and whatever those two raise.
  """
  get_sweep = sweep_of(config, get_sweep)
  if get_sweep:  # run() validates every point before anything is written
    return run(config, get_sweep, workdir, data_dir, sweep_index, report_only, overwrite)
  _check_single_run(sweep_index, report_only)  # train.setup validates the config
  start = time.time()
  trained = train.train_and_evaluate(config, workdir, data_dir, overwrite)
  finish_point(config, Point(SINGLE_POINT, SINGLE_POINT, {}), workdirs.resolve(workdir), trained, None,
               time.time() - start)  # its result.json, as a sweep point's
  return trained


def check_out(path: str) -> None:
  """Refuses an ``--out`` that cannot be written, before anything trains.

  Raises:
    StorageError naming the path and the fix.
  """
  directory = os.path.dirname(os.path.abspath(path))
  with files.storage_errors(f'making the directory of --out={path}', 'nothing was written', '--out'):
    os.makedirs(directory, exist_ok=True)
  if os.path.isdir(path):
    raise StorageError(f'--out={path} is a directory; name a JSON file, e.g. {os.path.join(path, "result.json")}')
  if not os.access(directory, os.W_OK):
    raise StorageError(f'--out={path} cannot be written: {directory} is not writable; name a file in a writable '
                       'directory')


def keep_records(workdir: str, records_dir: str) -> None:
  """``records.keep``: the run records of ``workdir`` copied into ``records_dir`` (``--records``)."""
  workdir, records_dir = workdirs.resolve(workdir), workdirs.resolve(records_dir)
  if records_dir == workdir:
    return  # rebuilt in place: the records are already there
  with files.storage_errors(f'keeping the run records in --records={records_dir}', f'the runs in {workdir} are intact',
                            '--records'):
    kept = records.keep(workdir, records_dir)
  logging.info('Run records (no checkpoints): %s, %.1f MB.', records_dir, kept / 1e6)


def commands(experiment: str, records_dir: str, argv: Sequence[str]) -> dict[str, str]:
  """The commands that train an experiment from scratch keeping its records in ``records_dir`` and that rebuild its
  report from them, from the command line ``argv`` that ran it (its other flags and overrides kept)."""
  skip, args, tokens = ('--workdir', '--records', '--report_only', '--overwrite'), [], iter(argv[1:])
  for token in tokens:
    name = token.split('=', 1)[0]
    if name in skip:
      if '=' not in token and name in ('--workdir', '--records'):
        next(tokens, None)  # its value came as the next token
      continue
    args.append(token)
  head = ['python', argv[0], *args]
  return {'train_command': ' '.join([*head, f'--workdir=/tmp/cnnjax/{experiment}', f'--records={records_dir}']),
          'rebuild_command': ' '.join([*head, f'--workdir={records_dir}', '--report_only'])}


def write_out(path: str, experiment: str, outcome: list[Point] | train.TrainResult, workdir: str,
              seconds: float, records_dir: str | None = None) -> None:
  """Writes what a finished experiment measured to ``path`` as JSON, stamped (``stamp.stamp``) with the command, commit,
  date, machine and versions: a single run's final metrics, or a sweep's summary rows, comparisons, verdicts and
  learning rates by budget, learning rates, validation curves and shift tolerance (report.md's tables, from
  WORKDIR/results.json) and the sum of its points' wall times (which ``wall_seconds`` is not after --report_only). So
  a number quoted from results/ names the command that regenerates it; with ``records_dir`` (``--records``), also the
  commands that train it from scratch and rebuild it from its kept records."""
  record = {**stamp.stamp(), 'experiment': experiment, 'workdir': workdirs.resolve(workdir),
            'wall_seconds': round(seconds, 1)}
  if records_dir:
    record.update(records=records_dir, **commands(experiment, records_dir, sys.argv))
  if isinstance(outcome, train.TrainResult):
    record['metrics'] = {k: float(v) for k, v in outcome.metrics.items()}
  else:
    summary = files.read_json(os.path.join(workdirs.resolve(workdir), 'results.json'),
                              're-run with --report_only to rebuild it')
    record.update(points=len(outcome), summary=summary['summary'], conclusion=summary.get('conclusion'),
                  comparisons=summary.get('comparisons'), budgets=summary.get('budgets'),
                  learning_rates=summary.get('learning_rates'), curves=summary.get('curves'),
                  invariance=summary.get('invariance'),
                  runs_wall_seconds=round(sum(r.get('wall_time_s', 0) for r in summary['points']), 1))
  with files.storage_errors(f'writing --out={path}', f'the run in {workdir} is intact', '--out'):
    files.write_json(path, record)
  logging.info('Results: %s', path)


def analyze(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]] | None,
            data_dir: str | None = None) -> str:
  """The per-layer analysis table of the config, or of every sweep point under its name, as markdown (no data is
  read)."""
  points = expand(get_sweep(), 1, config.seed) if get_sweep else [Point('', '', {})]
  sections = []
  for point in points:
    run = train.setup(apply_overrides(config, point.overrides), data_dir, prepare=False)
    shape, outputs = run.info.image_shape, run.info.num_outputs
    rows = analysis.analyze(run.config.model, shape, outputs)
    closed, xla = analysis.totals(rows)['flops'], analysis.xla_flops(run.model, shape)
    heading = f'## {point.name}' if point.name else ''
    sections.append(f'{heading}\n\nInput {"x".join(map(str, shape))}. Forward FLOPs per image: {closed:,} in '
                    'closed form (the table: a multiply-add is 2 FLOPs, every tap of a padded window counts, '
                    f'element-wise ops do not); {xla:,.0f} by XLA\'s cost analysis, which counts only the taps that '
                    'fall inside the image and adds the element-wise ops (bias, activation).\n\n'
                    f'{analysis.format_table(rows)}\n')
  return '\n'.join(sections).lstrip()
