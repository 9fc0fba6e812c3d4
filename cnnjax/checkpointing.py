"""Checkpoints: orbax's CheckpointManager, each checkpoint sealed by a manifest of its files' checksums once its
save has committed, and restoring the newest intact one.

Nothing here deletes a checkpoint that could still matter: one that fails its checksum or fails to restore is
moved to WORKDIR/corrupt_checkpoints/ with a warning, and the one before it is restored. Saves are synchronous:
a checkpoint is whole on disk (and sealed) before the loop goes on, so a failed write is reported at the step
that made it, with the previous checkpoint named as intact.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from cnnjax import files

CHECKPOINT_DIR = 'checkpoints'
BEST_CHECKPOINT_DIR = 'best_checkpoint'  # config.test_checkpoint=best_val: the best by validation so far
CORRUPT_DIR = 'corrupt_checkpoints'
ROOM_MARGIN = 1 << 20  # bytes a save needs beyond the state's own, for orbax's metadata


class Checkpoints:
  """The checkpoints of a run in WORKDIR/<subdir>, keeping the last ``keep`` (None: all), or with ``best`` =
  (metric, sign) the best one by that metric (maximised for sign 1, minimised for -1)."""

  def __init__(self, workdir: str, subdir: str = CHECKPOINT_DIR, keep: int | None = None,
               best: tuple[str, int] | None = None):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    ranking = {}
    if best:
      metric, sign = best
      ranking = {'best_fn': lambda m: m[metric], 'best_mode': 'max' if sign > 0 else 'min'}
    options = ocp.CheckpointManagerOptions(max_to_keep=1 if best else keep, enable_async_checkpointing=False,
                                           **ranking)
    # One item, named by its handler: orbax then never mistakes an emptied step directory for another layout.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
    """Saves ``state`` as checkpoint ``step`` and seals it.

    Raises:
      StorageError, in one line saying what is intact, when the disk has no room for it (checked first, so
      nothing is half-written) or a write fails (full disk, read-only filesystem, no permission).
    """
    what, kept = f'saving checkpoint {step}', intact(self.directory)
    needed = sum(getattr(x, 'nbytes', 8) for x in jax.tree.leaves(state)) + ROOM_MARGIN
    free = shutil.disk_usage(_existing(self.directory)).free
    if free < needed:
      raise files.storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory), what,
                                f'{kept} ({free:,} bytes free, about {needed:,} needed)')
    with files.storage_errors(what, kept):
      self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
      if jax.process_index() == 0 and os.path.isdir(self._step_dir(step)):  # kept (a best-only one may not be)
        files.seal(self._step_dir(step))

  def restore(self, step: int, template: Any) -> Any:
    """Checkpoint ``step`` restored into ``template``'s structure, after its checksums are checked.

    Raises:
      ValueError for a checksum mismatch; orbax's errors for files it cannot read.
    """
    path = self._step_dir(step)
    problem = files.damage(path) if files.is_sealed(path) else None
    if problem:
      raise ValueError(problem)
    return self._manager.restore(step, args=ocp.args.StandardRestore(template))

  def restore_latest(self, template: Any) -> Any:
    """The newest intact checkpoint restored into ``template``'s structure, or ``template`` if there is none.

    A checkpoint that fails its checksums or fails to restore (truncated, emptied, damaged) is moved to
    WORKDIR/corrupt_checkpoints/ with a warning, alone, and the one before it is tried.
    """
    set_aside = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(step, template)
      except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
        where = self._set_aside(step)
        set_aside.append(step)
        logging.warning('Checkpoint %d is unreadable (%s: %.200s); moved it to %s and trying the one before it.',
                        step, type(e).__name__, e, where)
    if set_aside:
      logging.warning('No readable checkpoint is left in %s: starting from step 0.', self.directory)
    return template

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint ``step`` to a unique WORKDIR/corrupt_checkpoints/<step>.<time>; returns where."""
    corrupt = os.path.join(self.workdir, CORRUPT_DIR)
    if jax.process_index() != 0:  # process 0 moves it; the others only skip it
      return corrupt
    os.makedirs(corrupt, exist_ok=True)
    target = files.unique_sibling(os.path.join(corrupt, str(step)), time.strftime('%Y%m%d-%H%M%S'))
    os.rename(self._step_dir(step), target)  # onto the new empty directory: atomic
    self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def intact(directory: str) -> str:
  """What a failed write leaves, in words: 'checkpoint 10 in DIR is intact', or that none was written yet."""
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  return f'checkpoint {max(steps)} in {directory} is intact' if steps else 'no checkpoint was written yet'


def _existing(path: str) -> str:
  """``path`` or its nearest existing ancestor (where a directory not yet made will live)."""
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def has_step(workdir: str, step: int) -> bool:
  """Whether ``workdir`` holds a checkpoint of ``step`` (a finished run's last, for ``step = num_train_steps``)."""
  return os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR, str(step)))
