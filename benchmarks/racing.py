"""Races to a test accuracy: a cnnjax run as a user runs it and the PyTorch mirror of its recipe (same model,
optimizer, schedule, batch and examples), each timed from its start to its first evaluation at the target. No
flags: benchmarks/time_to_accuracy.py (CPU, several seeds) and benchmarks/accelerator_check.py (a GPU) use it,
as do benchmarks/speedrun.py and the check's speedrun section for whole runs timed to their test accuracy.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import numpy as np

from cnnjax.config import apply_overrides

Evals = list[tuple[int, float, float]]  # (step, seconds since the start, test accuracy) of each evaluation


def race_config(config, data_dir: str | None, epochs: int):
  """(config, run): ``config`` on the whole training split for ``epochs`` epochs, evaluated on test after every
  epoch, and its device-pipeline run, whose host arrays feed the PyTorch arms (the data is prepared here, and
  the arrays written, before anything is timed)."""
  from cnnjax import data, train
  check_plain_data(config)
  whole = apply_overrides(config, {'data.val_fraction': 0.0})
  run = train.setup(apply_overrides(whole, {'data.pipeline': 'device'}), data_dir)
  epoch = data.split_sizes(whole.data, run.pipeline.num_examples)[0] // config.batch_size
  raced = apply_overrides(whole, {'num_train_steps': epochs * epoch, 'eval_every_steps': epoch,
                                  'checkpoint_every_steps': epoch, 'test_checkpoint': 'last', 'lr_grid': ()})
  return raced, run


def check_plain_data(config) -> None:
  """Raises ValueError naming the flag when ``config`` augments its training batches or its evaluations: the
  PyTorch arms train on the plain arrays and evaluate plain test images, so such a race would not be even."""
  import torch_reference
  fields = ['data.augment_flip', 'data.augment_crop', 'data.random_erasing', 'eval_flip', 'eval_translate']
  for flag, base, value in torch_reference.unmirrored(config, fields):  # the base config's values are the plain ones
    raise ValueError(f'a race needs --config.{flag}={base} (got {value!r}): the PyTorch arms do not mirror it')


def normalised(run, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, H, W, C] float32 normalised as cnnjax's pipelines do, labels [N]) of the run's 'train' or
  'test' arrays."""
  arrays = run.pipeline.arrays[split]
  images = arrays['image'].astype(np.float32) / 255
  images = (images - np.asarray(run.spec.mean, np.float32)) / np.asarray(run.spec.std, np.float32)
  return images, arrays['target'].astype(np.int64)


def run_cnnjax(config, data_dir: str | None) -> Evals:
  """The evaluations of one cnnjax run (``train.train_and_evaluate`` in a fresh workdir, checkpoints and logs
  included), read from its metrics.jsonl."""
  from cnnjax import train
  with tempfile.TemporaryDirectory(prefix='cnnjax-race-') as workdir:
    start = time.time()
    train.train_and_evaluate(config, workdir, data_dir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
  return [(r['step'], r['time'] - start, r['test_accuracy']) for r in rows if 'test_accuracy' in r]


def run_torch(config, arm: str, train_data, test_data, image_shape, num_outputs: int, device: str = 'cpu',
              bf16: bool = False) -> Evals:
  """The evaluations of one PyTorch run of the same recipe, its data on ``device`` first (not timed), shuffled
  per epoch."""
  import torch
  import torch_reference
  (images, labels), (test_images, test_labels) = [[torch.from_numpy(a).to(device) for a in pair]
                                                  for pair in (train_data, test_data)]
  start = time.time()
  trainer = torch_reference.Trainer(config, image_shape, num_outputs, arm, device, bf16)
  order, evals, rng, batch = None, [], np.random.default_rng(config.seed), config.batch_size
  per_epoch = len(images) // batch  # steps of one pass over the training split, whatever eval_every_steps says
  for step in range(1, config.num_train_steps + 1):
    i = (step - 1) % per_epoch
    if i == 0:
      order = torch.from_numpy(rng.permutation(len(images))).to(device)
    idx = order[i * batch:(i + 1) * batch]
    trainer.train_step(images[idx], labels[idx])
    if step % config.eval_every_steps == 0:
      evals.append((step, time.time() - start, trainer.accuracy(test_images, test_labels, config.eval_batch_size)))
  return evals


def summarize(evals: list[Evals], target: float) -> dict:
  """One arm over its runs (one per seed): the median over seeds of the seconds to target (None unless every run
  reached it) and of the seconds per epoch (between the first and the last evaluation, so compilation is not
  counted), each seed's seconds to target, the median final accuracy and every run's evaluations."""
  reached = [next((s for _, s, acc in e if acc >= target), None) for e in evals]
  per_epoch = [(e[-1][1] - e[0][1]) / (len(e) - 1) for e in evals if len(e) > 1]
  return {'seconds_to_target': statistics.median(reached) if None not in reached else None,
          'seconds_to_target_per_seed': reached,
          'seconds_per_epoch': statistics.median(per_epoch) if per_epoch else None,
          'final_test_accuracy': statistics.median(e[-1][2] for e in evals),
          'reached': f'{sum(r is not None for r in reached)}/{len(reached)}',
          'runs': [[{'step': st, 'seconds': s, 'test_accuracy': a} for st, s, a in e] for e in evals]}


def ratio_of_medians(a: list[float], b: list[float]) -> dict:
  """median(a) / median(b) of two arms' per-seed seconds, paired by seed, with a 95 % percentile bootstrap
  interval over the seeds (scipy.stats.bootstrap, 9,999 resamples, fixed seed). With 5 seeds the interval is
  coarse: it cannot reach beyond ratios the resampled medians can form."""
  from scipy import stats
  ratio = statistics.median(a) / statistics.median(b)
  boot = stats.bootstrap((np.asarray(a), np.asarray(b)), lambda x, y: np.median(x) / np.median(y), paired=True,
                         vectorized=False, n_resamples=9999, method='percentile', random_state=0)
  return {'ratio': ratio, 'low': float(boot.confidence_interval.low), 'high': float(boot.confidence_interval.high)}


def time_run(config, data_dir: str | None) -> dict:
  """One timed run: {'seconds', 'test_accuracy', 'val_accuracy'}."""
  from cnnjax import train
  with tempfile.TemporaryDirectory(prefix='cnnjax-speedrun-') as workdir:
    start = time.time()
    metrics = train.train_and_evaluate(config, workdir, data_dir).metrics
    seconds = time.time() - start
  return {'seconds': seconds, 'test_accuracy': metrics['test_accuracy'], 'val_accuracy': metrics.get('val_accuracy')}


def summary_over_seeds(runs: list[dict]) -> dict:
  """A point over its seeds: accuracy means with their 95 % t half-widths, and median seconds."""
  from cnnjax import report
  out = {'seeds': len(runs)}
  for metric in ('test_accuracy', 'val_accuracy'):
    values = [r[metric] for r in runs]
    if None not in values:
      mean, half = report.interval(values)
      out[metric] = {'mean': mean, 'interval': half, 'per_seed': values}
  seconds = [r['seconds'] for r in runs]
  out['seconds'] = {'median': statistics.median(seconds), 'per_seed': seconds}
  return out
