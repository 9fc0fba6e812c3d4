"""Metric writers: clu's TensorBoard/logging writer plus a metrics.jsonl line per write."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

from cnnjax import files


class JsonlWriter(interface.MetricWriter):
  """Appends {'step': s, 'time': unix seconds, name: value, ...} as one JSON line per write_scalars call.

  A run resumed at step k replays the steps after its checkpoint, so the rows a killed run wrote after step
  k are dropped first (all rows for a run that starts at 0), and a metric already in the file at a step is
  not written again: each step's metrics appear once. Each row is flushed as it is written, so none that a
  checkpoint's step reported is lost to a kill.
  """

  def __init__(self, path: str, start_step: int = 0):
    self._written: set[tuple[int, str]] = set()  # (step, name) pairs in the file
    if os.path.exists(path):
      for row in _truncate_after(path, start_step):
        self._written.update((row['step'], k) for k in row if k not in ('step', 'time'))
    self._file = open(path, 'a')  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    """Writes the scalars not yet in the file at ``step`` (a finished run launched again re-evaluates)."""
    new = {k: float(np.asarray(v)) for k, v in scalars.items() if (int(step), k) not in self._written}
    if new:
      self._file.write(json.dumps({'step': int(step), 'time': time.time(), **new}) + '\n')
      self._file.flush()  # on disk before the checkpoint of its step: a killed run loses no row it reported
      self._written.update((int(step), k) for k in new)

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._file.write(json.dumps({'hparams': {k: str(v) for k, v in hparams.items()}}) + '\n')

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()

  # Non-scalar summaries have no JSON form; TensorBoard gets them.
  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass


def _truncate_after(path: str, step: int) -> list[dict[str, Any]]:
  """Keeps the rows of metrics.jsonl up to ``step`` (none when step is 0), rewriting the file atomically;
  returns the kept rows that carry a step. Damaged lines (blank, cut by a kill, not JSON) are dropped with one
  warning and appended to metrics.jsonl.damaged, so that nothing written is lost."""
  rows, damaged = files.read_jsonl(path)
  if damaged:
    files.warn_damaged_lines(path, damaged)
    with open(path + '.damaged', 'a') as f:
      f.writelines(line if line.endswith('\n') else line + '\n' for line in damaged)
  keep = [row for row in rows if step and row.get('step', 0) <= step]
  with open(path + '.tmp', 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in keep)
  os.replace(path + '.tmp', path)
  return [row for row in keep if 'step' in row]


def create_writer(workdir: str, start_step: int = 0) -> metric_writers.MetricWriter:
  """TensorBoard events + logging + metrics.jsonl in workdir (from ``start_step`` on: see JsonlWriter);
  logging only on processes other than 0."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([metric_writers.create_default_writer(workdir, asynchronous=False),
                                     JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), start_step)])
