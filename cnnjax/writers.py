"""Metric writers: clu's TensorBoard/logging writer plus a metrics.jsonl line per write."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface


class JsonlWriter(interface.MetricWriter):
  """Appends {'step': s, name: value, ...} as one JSON line per write_scalars call."""

  def __init__(self, path: str):
    self._file = open(path, 'a')  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {'step': int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    self._file.write(json.dumps(row) + '\n')

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


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events + logging + metrics.jsonl in workdir; logging only on processes other than 0."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([metric_writers.create_default_writer(workdir, asynchronous=False),
                                     JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])
