"""Keeping runs safe: which run a workdir holds, restoring past corrupt checkpoints, and preemption signals.

Nothing here deletes a checkpoint: a corrupt one is moved to WORKDIR/corrupt_checkpoints/, and --overwrite
moves the whole old run aside. A workdir is locked by the process training in it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import threading
import time
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from cnnjax.config import ConfigError

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
BEST_CHECKPOINT_DIR = 'best_checkpoint'  # config.test_checkpoint=best_val: the best by validation so far
LOCK_FILE = 'lock'
# Fields that change how a run is watched, not what it computes: a resumed run may change them.
OPERATIONAL = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
               'eval_batch_size', 'seeds', 'data.cache', 'data.prefetch', 'data.download_timeout_s', 'data.source_dir',
               'analysis.invariance_shifts', 'baseline_point')


def manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  """The orbax CheckpointManager of ``workdir``'s checkpoints, keeping the last ``keep`` (None: all)."""
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep))


def best_manager(workdir: str, metric: str, sign: int) -> ocp.CheckpointManager:
  """The CheckpointManager of ``workdir``'s best checkpoint by ``metric`` (maximised for sign 1, minimised for
  -1): every save passes its metrics, and orbax keeps the best one only."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[metric],
                                         best_mode='max' if sign > 0 else 'min')
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, BEST_CHECKPOINT_DIR)), options=options)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
  flat = traverse_util.flatten_dict(json.loads(json.dumps(config)), sep='.')  # tuples -> lists, as on disk
  return {k: v for k, v in flat.items() if k not in OPERATIONAL}


def check_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Refuses to resume a workdir written by a different config; with ``overwrite``, moves the old run aside.

  Raises:
    ConfigError naming the differing fields, unless ``overwrite``.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if overwrite:
    move_aside(workdir)
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(config.to_dict())
  diff = [f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
  if diff:
    raise ConfigError(f'--workdir={workdir} holds a run of a different config ({"; ".join(diff)}); use a new '
                          '--workdir, or add --overwrite to move the old run aside and start again')


def move_aside(workdir: str) -> None:
  """Moves what a workdir holds (but its lock) to WORKDIR.overwritten-<time>, so that a new run starts from
  nothing."""
  contents = [f for f in os.listdir(workdir) if f != LOCK_FILE] if os.path.isdir(workdir) else []
  if contents:
    aside = f'{workdir.rstrip("/")}.overwritten-{time.strftime("%Y%m%d-%H%M%S")}'
    os.makedirs(aside)
    for name in contents:
      os.rename(os.path.join(workdir, name), os.path.join(aside, name))
    logging.warning('--overwrite: moved the previous run in %s to %s.', workdir, aside)


class WorkdirLock:
  """While held, no other process can train in ``workdir``: an exclusive ``flock`` on WORKDIR/lock, which names
  the holder (host and pid). The kernel releases it when the process ends, however it ends (SIGKILL included),
  so a dead run never blocks the next one. A refused process writes nothing.

  Raises:
    ConfigError naming the holder, on entering while another process holds it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors='replace').strip() or 'another process'
      os.close(fd)
      workdir = os.path.dirname(self.path)
      raise ConfigError(f'--workdir={workdir} is in use by {holder}; wait for that run to end or stop it, or use '
                        'another --workdir') from None
    os.ftruncate(fd, 0)
    os.write(fd, f'{socket.gethostname()} pid {os.getpid()}\n'.encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config a workdir's run belongs to."""
  with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    json.dump(config.to_dict(), f, indent=1, sort_keys=True)


def restore_latest(manager: ocp.CheckpointManager, state: Any, workdir: str) -> Any:
  """The newest readable checkpoint restored into ``state``'s structure, or ``state`` if there is none.

  A checkpoint that fails to restore (truncated or corrupted files) is moved to WORKDIR/corrupt_checkpoints/
  with a warning, and the previous one is tried.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
      corrupt = os.path.join(workdir, 'corrupt_checkpoints')
      os.makedirs(corrupt, exist_ok=True)
      shutil.move(os.path.join(manager.directory, str(step)), os.path.join(corrupt, f'{step}-{int(time.time())}'))
      manager.reload()
      logging.warning('Checkpoint at step %d is unreadable (%s: %.200s); moved it to %s and fell back to the '
                      'previous one.', step, type(e).__name__, e, corrupt)
  return state


class Preempted(Exception):  # noqa: N818 - a signal, not an error
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint; re-run the same command to resume."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f'preempted: saved a checkpoint at step {step} in {workdir}; re-run the same command to resume')
    self.step = step


class PreemptionSignals:
  """While active, SIGTERM and SIGINT set ``requested`` instead of killing the process.

  The loop polls ``requested`` after each step, saves a checkpoint and stops. Handlers are installed only in
  the main thread (Python allows no other) and the previous ones are restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received %s: saving a checkpoint after this step, then stopping.', signal.Signals(signum).name)
    self.requested = signum

  def __enter__(self) -> PreemptionSignals:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
