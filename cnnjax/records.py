"""A run's records: its directory's name (``RunName``), what it writes to result.json and a sweep hands the
report (``RunResult``, with its learning-rate pick, ``LrPick``), and what its trained model needs to classify raw
images (``DataRecord``, data.json). Each is formatted and parsed here only; the result's schema is versioned, and
result.json files of the earlier, flat schema are read too."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

_SEED = re.compile(r'^(?P<point>.*),seed=(?P<seed>\d+)$')
_LR = re.compile(r'^lr=(?P<lr>[0-9.e+-]+)$')

SCHEMA = 2  # result.json's schema: 1 (no 'schema' field) was flat, the pick's fields beside the metrics


@dataclasses.dataclass(frozen=True)
class RunName:
  """A sweep run's place: its point (a setting), its seed where the sweep repeats the point over seeds, and its
  learning rate where the point has a grid. On disk: WORKDIR/<point>[,seed=<S>]/[lr=<G>/]."""
  point: str
  seed: int | None = None
  lr: float | None = None

  @property
  def run(self) -> str:
    """The directory of the point's seed: 'point' or 'point,seed=S'."""
    return self.point if self.seed is None else f'{self.point},seed={self.seed}'

  @property
  def lr_dir(self) -> str:
    """The directory, below ``run``, of the learning rate's trial: 'lr=G' ('' without a rate)."""
    return '' if self.lr is None else f'lr={self.lr:g}'

  @classmethod
  def parse(cls, run: str, lr_dir: str = '') -> RunName:
    """The inverse of (``run``, ``lr_dir``)."""
    seed = _SEED.match(run)
    rate = _LR.match(lr_dir)
    return cls(seed['point'] if seed else run, int(seed['seed']) if seed else None,
               float(rate['lr']) if rate else None)


@dataclasses.dataclass(frozen=True)
class LrPick:
  """How a run's learning rate was picked from its grid.

  Attributes:
    picked: the rate picked (its run's metrics are the result's).
    metric: the validation metric that picked it ('val_accuracy', or 'val_loss' for regression).
    grid: every rate tried, ascending (the grid and its extensions; with lr_pick=point, the lead's pick alone for
      the other seeds).
    scores: ``metric`` at each rate of ``grid``; None where the loss diverged.
    on_edge: whether the pick lies on the edge of a grid of two or more rates.
    extensions: rates tried beyond the configured grid.
    picked_by: with lr_pick=point, the run (the point's first seed) whose grid picked the rate; 'halving': the
      mean over the point's seeds picked it (``halving``; ``scores`` are this run's at the shortest budget); None:
      this run's.
  """
  picked: float
  metric: str
  grid: tuple[float, ...]
  scores: tuple[float | None, ...]
  on_edge: bool = False
  extensions: int = 0
  picked_by: str | None = None

  def by_rate(self) -> dict[float, float | None]:
    return dict(zip(self.grid, self.scores, strict=True))


@dataclasses.dataclass(frozen=True)
class RunResult:
  """A finished run's record, as result.json holds it and the report reads it.

  Attributes:
    name: the run's directory in its sweep ('point,seed=S'; a single run's: 'base').
    point: the setting it is a seed of (the report's row).
    overrides: the sweep's overrides of the base config for this run.
    seed: its config.seed.
    metrics: the final metrics: 'train_*' (the last logged), 'val_*' (none when val_fraction is 0), 'test_*'.
    num_params: trainable parameters.
    flops: forward FLOPs per image (closed form).
    steps_per_sec: the median over the run.
    wall_time_s: seconds the run took, every learning rate it tried included.
    selected_step: with test_checkpoint=best_val, the step whose weights were tested.
    lr: the learning-rate pick; None without a grid.
    invariance: shift invariance of the tested weights ('shift' and a value per shift for 'accuracy',
      'agreement', 'consistent_correct'); None when not measured.
  """
  name: str
  point: str
  overrides: dict[str, Any]
  seed: int
  metrics: dict[str, float]
  num_params: int
  flops: float
  steps_per_sec: float = math.nan
  wall_time_s: float = 0.0
  selected_step: int | None = None
  lr: LrPick | None = None
  invariance: dict[str, list[float]] | None = None

  def to_json(self) -> dict[str, Any]:
    """result.json's content (schema ``SCHEMA``)."""
    return {'schema': SCHEMA, **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> RunResult:
    """The inverse of ``to_json``; schema 1 records (flat) are read as well.

    Raises:
      ValueError for a record of an unknown schema or without a field this schema needs.
    """
    schema = record.get('schema', 1)
    if schema == 1:
      return cls._from_flat(record)
    if schema != SCHEMA:
      raise ValueError(f'schema {schema} is newer than this cnnjax reads ({SCHEMA})')
    fields = {k: v for k, v in record.items() if k != 'schema'}
    lr = fields.pop('lr', None)
    if lr is not None:
      lr = LrPick(**{**lr, 'grid': tuple(lr['grid']), 'scores': tuple(lr['scores'])})
    return cls(**fields, lr=lr)

  @classmethod
  def _from_flat(cls, record: Mapping[str, Any]) -> RunResult:
    """A schema-1 record: metrics and the pick's fields ('picked_lr', 'lr_grid', '<metric>_by_lr', ...) side by
    side at the top level."""
    by_lr = next((k for k in record if k.endswith('_by_lr')), None)
    lr = None
    if 'picked_lr' in record:
      lr = LrPick(record['picked_lr'], by_lr[:-len('_by_lr')], tuple(record['lr_grid']), tuple(record[by_lr]),
                  record.get('picked_on_edge', False), record.get('lr_extensions', 0), record.get('lr_picked_by'))
    metrics = {k: v for k, v in record.items() if k.startswith(('train_', 'val_', 'test_')) and k != by_lr}
    return cls(record['name'], record['point'], record['overrides'], record['seed'], metrics, record['num_params'],
               record['flops'], record.get('steps_per_sec', math.nan), record.get('wall_time_s', 0.0),
               record.get('selected_step'), lr, record.get('invariance'))

  def row(self) -> dict[str, Any]:
    """The record as one flat row (results.csv): identity, metrics, cost and the pick's scalars."""
    pick = {} if self.lr is None else {'picked_lr': self.lr.picked, 'picked_on_edge': self.lr.on_edge,
                                       'lr_extensions': self.lr.extensions, 'lr_picked_by': self.lr.picked_by or ''}
    step = {} if self.selected_step is None else {'selected_step': self.selected_step}
    return {'name': self.name, 'point': self.point, 'seed': self.seed, **self.metrics, 'num_params': self.num_params,
            'flops': self.flops, 'steps_per_sec': self.steps_per_sec, 'wall_time_s': self.wall_time_s, **step, **pick}


DATA_FILE = 'data.json'  # in a run's workdir: its DataRecord


@dataclasses.dataclass(frozen=True)
class DataRecord:
  """What a trained run's model needs to classify raw images, written to its workdir when it starts, so that
  ``predict.load(WORKDIR)`` needs neither the config by hand nor the training data.

  Attributes:
    dataset: ``config.data.name``.
    image_size: the side images are fitted to (short side scaled, centre cropped).
    grayscale: one gray channel instead of RGB.
    mean, std: the per-channel normalisation of pixel values in [0, 1].
    head: the task head ('multiclass', 'binary', 'regression').
    num_outputs: the model's output width.
    classes: the class names (for a binary head on a multi-class dataset: ('other', positive class)).
  """
  dataset: str
  image_size: int
  grayscale: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]
  head: str
  num_outputs: int
  classes: tuple[str, ...]
  schema: int = 1

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> DataRecord:
    """Raises ValueError for a record of a later schema, TypeError/KeyError for one without a field."""
    if record.get('schema', 1) > 1:
      raise ValueError(f'data.json has schema {record["schema"]}, newer than this cnnjax reads (1)')
    fields = {**record, 'mean': tuple(record['mean']), 'std': tuple(record['std']), 'classes': tuple(record['classes'])}
    return cls(**fields)


RECORD_FILES = ('config.json', 'metrics.jsonl', 'result.json', DATA_FILE, 'first_layer.npz')  # a run's records
REPORT_FILES = ('report.md', 'results.json', 'results.csv')  # a sweep's report, beside its plots (*.png)
NOT_RECORDS = ('checkpoints', 'best_checkpoint', '.populations')  # directories left out: weights, not records


def keep(workdir: str, records: str) -> int:
  """Copies the run records below ``workdir`` (each run's config, metrics, result and data record, first-layer
  maps; a sweep's report and plots; no checkpoints) into ``records``, replacing what it held, so that the report
  rebuilds from them (``--report_only``); returns the bytes kept."""
  tmp = f'{records.rstrip(os.sep)}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  kept = 0
  for parent, dirs, names in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d not in NOT_RECORDS and '.overwritten-' not in d)
    top = parent == workdir
    for name in names:
      if name in RECORD_FILES or (top and (name in REPORT_FILES or name.endswith('.png'))):
        target = os.path.join(tmp, os.path.relpath(parent, workdir), name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(parent, name), target)
        kept += os.path.getsize(target)
  shutil.rmtree(records, ignore_errors=True)
  os.rename(tmp, records)
  return kept
