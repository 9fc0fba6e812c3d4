"""Metric writers: a metrics.jsonl line per write, TensorBoard event files and the log, and the progress line.

None of them needs TensorFlow: TensorBoard's events are written by the tensorboard package's own event-file
writer (the one PyTorch uses), so a run on prepared arrays imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import numpy as np
from absl import logging

from cnnjax import files


class Writer(Protocol):
  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...
  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...
  def flush(self) -> None: ...
  def close(self) -> None: ...


class JsonlWriter:
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

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes the scalars not yet in the file at ``step`` (a finished run launched again re-evaluates)."""
    new = {k: float(np.asarray(v)) for k, v in scalars.items() if (int(step), k) not in self._written}
    if new:
      self._file.write(json.dumps({'step': int(step), 'time': time.time(), **new}) + '\n')
      self._file.flush()  # on disk before the checkpoint of its step: a killed run loses no row it reported
      self._written.update((int(step), k) for k in new)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._file.write(json.dumps({'hparams': {k: str(v) for k, v in hparams.items()}}) + '\n')

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


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
  files.write_text(path, ''.join(json.dumps(row) + '\n' for row in keep))
  return [row for row in keep if 'step' in row]


class TensorBoardWriter:
  """Scalars as TensorBoard events in ``logdir`` (tensorboard's event-file writer; no TensorFlow)."""

  def __init__(self, logdir: str):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self._writer = EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(np.asarray(v))) for k, v in scalars.items()]
    self._writer.add_event(event_pb2.Event(step=int(step), wall_time=time.time(),
                                           summary=summary_pb2.Summary(value=values)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # the config is in config.json and in metrics.jsonl's first row

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class LogWriter:
  """Scalars as one log line per write: ``[step] name=value, ...``."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(np.asarray(v)):.6g}' for k, v in sorted(scalars.items())))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # the launcher logs the config once

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter:
  """Writes to each of ``writers`` in turn."""

  def __init__(self, writers: list[Writer]):
    self.writers = writers

  def write_scalars(self, step: int, scalars: Mapping[str, Any], log: bool = True) -> None:
    """Writes ``scalars`` to every writer (but the log, unless ``log``)."""
    for w in self.writers:
      if log or not isinstance(w, LogWriter):
        w.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def create_writer(workdir: str, start_step: int = 0) -> MultiWriter:
  """The log + TensorBoard events + metrics.jsonl in workdir (from ``start_step`` on: see JsonlWriter); the log
  only on processes other than 0."""
  if jax.process_index() > 0:
    return MultiWriter([LogWriter()])
  return MultiWriter([LogWriter(), TensorBoardWriter(workdir),
                      JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), start_step)])


class MemberWriters(MultiWriter):
  """The writers of a population's members (``create_writer`` of each member's workdir, without their log lines):
  a scalar that is a vector over members goes to each member's writer element by element, a plain scalar to all;
  the log gets one line per write with each metric's range over the members. A dropped member (one whose loss
  diverged) gets nothing more."""

  def __init__(self, writers: list[MultiWriter]):
    self.writers, self.active = writers, list(range(len(writers)))

  def drop(self, member: int) -> None:
    """Writes nothing more to ``member``'s writer."""
    self.active = [i for i in self.active if i != member]

  def member(self, i: int) -> MultiWriter:
    return self.writers[i]

  def write_scalars(self, step: int, scalars: Mapping[str, Any], log: bool = True) -> None:
    for i in self.active:
      self.writers[i].write_scalars(step, {k: np.asarray(v)[i] if np.ndim(v) else v for k, v in scalars.items()},
                                    log=False)
    if log and self.active:
      ranges = {k: np.asarray(v)[self.active] if np.ndim(v) else np.asarray([v]) for k, v in sorted(scalars.items())}
      logging.info('[%d] %d members: %s', step, len(self.active), ', '.join(
          f'{k}={r.min():.4g}' + (f'..{r.max():.4g}' if r.max() > r.min() else '') for k, r in ranges.items()))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # each member's: ``member(i).write_hparams``


def duration(seconds: float) -> str:
  """'45s', '3m 20s', '2h 05m'."""
  seconds = round(seconds)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m {seconds % 60:02d}s'
  return f'{seconds // 3600}h {seconds % 3600 // 60:02d}m'


class Progress:
  """Every ``every`` steps, logs the step, steps/s over the last interval and the time left at that speed, and
  writes 'steps_per_sec'. The clock starts when the first call returns, after compilation: the time left is
  not inflated by it. Where the first call ends on a logged step, its line says how long it took, compilation
  included, and leaves the time left for the next line."""

  def __init__(self, num_steps: int, every: int, writer: MultiWriter, start_step: int = 0):
    self.num_steps, self.every, self.writer = num_steps, every, writer
    self._step, self._time, self._first = start_step, time.monotonic(), True

  def __call__(self, step: int) -> None:
    first, boundary = self._first, not step % self.every or step == self.num_steps
    if not (first or boundary):
      return
    now = time.monotonic()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    if first:
      self._first, took = False, now - self._time
      self._step, self._time = step, now
    if not boundary:
      return
    if first:
      logging.info('Step %d/%d (%.0f%%); the first call took %s, compilation included', step, self.num_steps,
                   100 * step / self.num_steps, duration(took))
    else:
      self._step, self._time = step, now
      logging.info('Step %d/%d (%.0f%%), %.1f steps/s, %s left', step, self.num_steps, 100 * step / self.num_steps,
                   rate, duration((self.num_steps - step) / rate) if rate > 0 else '?')
    self.writer.write_scalars(step, {'steps_per_sec': rate}, log=False)  # the line above says it
