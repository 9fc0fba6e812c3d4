"""Sweeps: an experiment's ``get_sweep()`` lists config overrides; each point trains in WORKDIR/<point name>.

A point is done when its ``result.json`` exists, so re-running a sweep resumes it (an unfinished point resumes
from its checkpoints), ``--sweep_index=i`` runs point i alone (one task of a cluster array job), and the report
is rebuilt from whatever points are finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cnnjax import analysis, checkpointing, input_pipeline, models, report, train

Overrides = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep: a name (its directory) and the overrides applied to the base config."""
  name: str
  overrides: Overrides


def grid(axes: dict[str, Sequence[Any]]) -> list[Overrides]:
  """Every combination of the values of ``axes`` ({'model.pool': ['max', 'avg'], ...}) as override dicts."""
  return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


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
      points.append(Point(f'{name},seed={base_seed + i}' if extra else name, {**overrides, **extra}))
  if len({p.name for p in points}) != len(points):
    raise train.ConfigError('two sweep points have the same name; give them distinct "name" overrides')
  return points


def apply_overrides(config: ml_collections.ConfigDict, overrides: Overrides) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-path overrides set ('name' is only a label)."""
  config = config.copy_and_resolve_references()
  for path, value in overrides.items():
    if path == 'name':
      continue
    *parents, field = path.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    if field not in node:
      raise train.ConfigError(f'sweep override {path!r} is not a config field')
    node[field] = value
  return config


# ---------------------------------------------------------------------------------------------------------
# Running points.

def run_point(config: ml_collections.ConfigDict, point: Point, workdir: str, data_dir: str | None
              ) -> dict[str, Any]:
  """Trains one point (or resumes it), analyses it and writes WORKDIR/<name>/result.json."""
  point_dir = os.path.join(workdir, point.name)
  result_path = os.path.join(point_dir, 'result.json')
  if os.path.exists(result_path):
    logging.info('Sweep point %s is done; skipping.', point.name)
    return load_result(point_dir)
  logging.info('Sweep point %s: %s', point.name, point.overrides)
  start = time.time()
  metrics = train.train_and_evaluate(config, point_dir, data_dir)
  wall_time = time.time() - start
  builder, info = train.prepare_data(config, data_dir)
  model = models.build_model(config.model, info.num_outputs)
  params = restore_params(config, model, info, point_dir)
  history = read_metrics(point_dir)
  train_rows = [r for r in history if 'train_loss' in r]
  speeds = [r['steps_per_sec'] for r in history if 'steps_per_sec' in r]
  result = {'name': point.name, 'overrides': point.overrides, 'seed': config.seed, **metrics,
            **{k: v for k, v in train_rows[-1].items() if k.startswith('train_')},
            'flops': analysis.totals(analysis.analyze(config.model, info.image_shape, info.num_outputs))['flops'],
            'steps_per_sec': statistics.median(speeds) if speeds else float('nan'), 'wall_time_s': wall_time}
  images, targets = _eval_sample(config, builder)
  if config.analysis.invariance_shifts and config.head == 'multiclass':
    result['invariance'] = analysis.shift_invariance(model.apply, params, images, targets,
                                                     config.analysis.invariance_shifts)
  if jax.process_index() == 0:
    if model.blocks:
      filters, maps = analysis.first_layer_maps(model, params, images[0])
      np.savez(os.path.join(point_dir, 'first_layer.npz'), filters=filters, maps=maps, image=images[0])
    with open(result_path, 'w') as f:
      json.dump(result, f, indent=1)
  return result


def restore_params(config: ml_collections.ConfigDict, model: models.CNN, info: input_pipeline.DataInfo,
                   workdir: str):
  """The parameters of the latest checkpoint in ``workdir``."""
  state = jax.eval_shape(lambda: train.create_train_state(config, model, info.image_shape, jax.random.key(0)))
  with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints'))) as manager:
    return checkpointing.restore_latest(manager, state, workdir).params


def _eval_sample(config: ml_collections.ConfigDict, builder, num: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Up to ``num`` real eval examples as host arrays (images [N, H, W, C], targets [N])."""
  images, targets = [], []
  for batch in input_pipeline.eval_batches(config, builder, num_devices=1):
    mask = batch['mask'].reshape(-1)
    images.append(batch['image'].reshape(-1, *batch['image'].shape[2:])[mask])
    targets.append(batch['target'].reshape(-1, *batch['target'].shape[2:])[mask])
    if sum(len(x) for x in images) >= num:
      break
  return np.concatenate(images)[:num], np.concatenate(targets)[:num]


def read_metrics(point_dir: str) -> list[dict[str, float]]:
  """The rows of a run's metrics.jsonl that carry a step."""
  path = os.path.join(point_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [row for row in map(json.loads, f) if 'step' in row]


def load_result(point_dir: str) -> dict[str, Any]:
  with open(os.path.join(point_dir, 'result.json')) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------------------
# The experiment entry point.

def run(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]], workdir: str,
        data_dir: str | None = None, sweep_index: int | None = None, report_only: bool = False,
        overwrite: bool = False) -> list[Point]:
  """Runs a sweep (all points, or only ``sweep_index``), then writes the report of the finished points.

  Every point's config is validated before anything is trained or written; ``overwrite`` then moves a
  previous sweep in ``workdir`` aside.

  Returns:
    The sweep's points.
  """
  points = expand(get_sweep(), config.seeds, config.seed)
  if sweep_index is not None and not 0 <= sweep_index < len(points):
    raise train.ConfigError(f'--sweep_index={sweep_index} is out of range: this sweep has {len(points)} points '
                            f'(0..{len(points) - 1})')
  configs = {p.name: apply_overrides(config, p.overrides) for p in points}
  for name, point_config in configs.items():
    try:
      train.validate_config(point_config, jax.device_count())
    except train.ConfigError as e:
      raise train.ConfigError(f'sweep point {name}: {e}') from None
  if overwrite and not report_only:
    checkpointing.move_aside(workdir)
  if not report_only:
    for i, point in enumerate(points):
      if sweep_index is None or i == sweep_index:
        run_point(configs[point.name], point, workdir, data_dir)
  if sweep_index is None and jax.process_index() == 0:
    done = [p for p in points if os.path.exists(os.path.join(workdir, p.name, 'result.json'))]
    if not done:
      raise train.ConfigError(f'--report_only: no finished sweep points in {workdir}')
    report.write(workdir, [load_result(os.path.join(workdir, p.name)) for p in done],
                 {p.name: read_metrics(os.path.join(workdir, p.name)) for p in done})
    logging.info('Report: %s (%d of %d points finished).', os.path.join(workdir, 'report.md'), len(done),
                 len(points))
  return points


def analyze(config: ml_collections.ConfigDict, get_sweep: Callable[[], list[Overrides]] | None,
            data_dir: str | None = None) -> str:
  """The per-layer analysis table of the config, or of every sweep point, as markdown (no data is read)."""
  points = expand(get_sweep(), 1, config.seed) if get_sweep else [Point('config', {})]
  sections = []
  for point in points:
    point_config = apply_overrides(config, point.overrides)
    train.validate_config(point_config, 1)
    builder = input_pipeline.get_builder(point_config.data, data_dir)  # features only: nothing is generated
    info = input_pipeline.data_info(point_config, builder)
    rows = analysis.analyze(point_config.model, info.image_shape, info.num_outputs)
    flops = analysis.xla_flops(models.build_model(point_config.model, info.num_outputs), info.image_shape)
    sections.append(f'## {point.name}\n\ninput {"x".join(map(str, info.image_shape))}, XLA forward FLOPs per '
                    f'image: {flops:,.0f}\n\n{analysis.format_table(rows)}\n')
  return '\n'.join(sections)
