"""A run's workdir: its lock, which config it holds, moving an old run aside, preemption signals, and ``held``,
which holds all of them while a run trains.

Nothing here deletes anything: --overwrite moves the old run to WORKDIR.overwritten-<time>, and refuses while
any run below the workdir is training. A workdir is locked by the process training in it; a symbolic link is
resolved once (``resolve``), so a run and everything it moves stay in the link's target's tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import traverse_util

from cnnjax import checkpointing, files, optim
from cnnjax.errors import ConfigError, Preempted, WorkdirInUse

CONFIG_FILE = 'config.json'
LOCK_FILE = 'lock'
# Fields that change how a run is watched or which program maps it onto the devices, not what it computes (but
# for float rounding): a resumed run may change them.
OPERATIONAL = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
               'eval_batch_size', 'seeds', 'data.prefetch', 'data.download_timeout_s', 'data.source_dir',
               'analysis.invariance_shifts', 'baseline_point', 'lr_pick', 'parallel', 'population_map')
# Fields added to the config after runs were first written, each with the value under which a run trains as runs
# did before the field existed: a run whose config.json lacks one resumes under a config with that value.
ADDED_FIELDS = {'optimizer.ema_decay': 0.0, 'eval_translate': 0, 'model.norm_scale': True,
                'model.conv_init': 'lecun_normal', 'model.kernel_sizes': (), 'model.pool_padding': 'VALID',
                'model.pool_blocks': (), 'model.block_dropout': 0.0, 'model.dense_norm': 'none',
                'optimizer.dense_max_norm': 0.0, 'data.grayscale': False, 'optimizer.cooldown_fraction': 0.2,
                'budgets': ()}
# Fields removed from the config, with what read them: tf.data's cache and shuffle buffer, which by then served
# only TFDS datasets of varying image sizes. A run whose config.json holds one resumes without it.
REMOVED_FIELDS = ('data.cache', 'data.shuffle_buffer')
_HELD: set[str] = set()  # the lock files this process holds


def resolve(workdir: str) -> str:
  """The absolute path ``workdir`` names, with symbolic links resolved."""
  return os.path.realpath(workdir)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
  """The fields that decide what a run computes, flat; a weight decay its optimizer ignores counts as 0 (configs
  written before such a decay was refused held 1e-4 under adam)."""
  flat = traverse_util.flatten_dict(json.loads(json.dumps(config)), sep='.')  # tuples -> lists, as on disk
  if flat.get('optimizer.name') not in optim.DECAYING and 'optimizer.weight_decay' in flat:
    flat['optimizer.weight_decay'] = 0.0
  return {k: v for k, v in flat.items() if k not in OPERATIONAL and k not in REMOVED_FIELDS}


def check(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Refuses to resume a workdir written by a different config; with ``overwrite``, moves the old run aside.

  Raises:
    ConfigError naming the differing fields, unless ``overwrite``; DamagedFile for an unreadable config.json;
    WorkdirInUse if ``overwrite`` would move a run that is training.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if overwrite:
    move_aside(workdir)
  if not os.path.exists(path):
    return
  old = _flat(files.read_json(path, 'restore it from a copy, or add --overwrite to move the old run aside and '
                                    'start again'))
  new = _flat(config.to_dict())
  old = {**{k: v for k, v in _flat(ADDED_FIELDS).items() if k in new}, **old}
  diff = [f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
  if diff:
    raise ConfigError(f'--workdir={workdir} holds a run of a different config ({"; ".join(diff)}); use a new '
                      '--workdir, or add --overwrite to move the old run aside and start again')


def move_aside(workdir: str) -> None:
  """Moves what ``workdir`` holds (but this process's own lock) to a new WORKDIR.overwritten-<time>[-n].

  Raises:
    WorkdirInUse, moving nothing, if a run below ``workdir`` is training (holds its lock). The locks of the
    runs below are held while they move, so none can start in the middle.
  """
  workdir = resolve(workdir)
  if not os.path.isdir(workdir):
    return
  with contextlib.ExitStack() as stack:
    for lock in _lock_files(workdir):
      stack.enter_context(_try_lock(lock, workdir))
    contents = [f for f in os.listdir(workdir) if os.path.join(workdir, f) not in _HELD]
    if not contents:
      return
    aside = files.unique_sibling(workdir, f'overwritten-{time.strftime("%Y%m%d-%H%M%S")}')
    for name in contents:
      with contextlib.suppress(FileNotFoundError):  # another --overwrite moved it first
        os.rename(os.path.join(workdir, name), os.path.join(aside, name))
  logging.warning('--overwrite: moved the previous run in %s to %s.', workdir, aside)


def _lock_files(workdir: str) -> list[str]:
  return [os.path.join(root, LOCK_FILE) for root, _, names in os.walk(workdir)
          if LOCK_FILE in names and os.path.join(root, LOCK_FILE) not in _HELD]


def _lock_or_holder(fd: int) -> str | None:
  """Takes the exclusive lock on ``fd`` at once and returns None, or returns its holder (the lock file's text)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return None
  except BlockingIOError:
    return os.read(fd, 200).decode(errors='replace').strip() or 'another process'


@contextlib.contextmanager
def _try_lock(path: str, workdir: str):
  """Holds ``path``'s lock, or raises WorkdirInUse naming its holder."""
  fd = os.open(path, os.O_RDONLY)
  try:
    holder = _lock_or_holder(fd)
    if holder:
      raise WorkdirInUse(f'--overwrite would move {workdir}, but the run in {os.path.dirname(path)} is training '
                         f'({holder}); wait for it to end or stop it, or use another --workdir')
    yield
  finally:
    os.close(fd)


class WorkdirLock:
  """While held, no other process can train in ``workdir``: an exclusive ``flock`` on WORKDIR/lock, which names
  the holder (host and pid). The kernel releases it when the process ends, however it ends (SIGKILL included),
  so a dead run never blocks the next one. A refused process writes nothing.

  Raises:
    WorkdirInUse naming the holder, on entering while another process holds it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(resolve(workdir), LOCK_FILE)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    holder = _lock_or_holder(fd)
    if holder:
      os.close(fd)
      error = WorkdirInUse(f'--workdir={os.path.dirname(self.path)} is in use by {holder}; wait for that run to end '
                           'or stop it, or use another --workdir')
      error.holder = holder
      raise error
    os.ftruncate(fd, 0)
    os.write(fd, f'{socket.gethostname()} pid {os.getpid()}\n'.encode())
    self._fd = fd
    _HELD.add(self.path)
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      _HELD.discard(self.path)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config a workdir's run belongs to."""
  files.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


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


@contextlib.contextmanager
def held(config: ml_collections.ConfigDict, workdir: str, overwrite: bool,
         members: Sequence[tuple[ml_collections.ConfigDict, str]] = ()) -> Iterator[PreemptionSignals]:
  """Holds ``workdir`` (and a population's members' (config, workdir) pairs) locked, with failed writes turned
  into one line and SIGTERM/SIGINT into a request the training loop answers with a checkpoint, after checking that
  the workdirs hold no other config's run; yields the preemption signals.

  Raises:
    WorkdirInUse, ConfigError (another config's run) before anything is written; Preempted after the block when
    a signal came after the loop's last step.
  """
  with contextlib.ExitStack() as stack:
    checkpoint_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)  # what is intact: asked when a write fails
    stack.enter_context(files.storage_errors('writing the run', lambda: checkpointing.intact(checkpoint_dir)))
    if jax.process_index() == 0:  # in a multi-host run, process 0 holds the workdirs
      for directory in [workdir, *(d for _, d in members)]:
        stack.enter_context(WorkdirLock(directory))
    preemption = stack.enter_context(PreemptionSignals())  # SIGTERM/SIGINT: save, then stop
    check(config, workdir, overwrite)
    for member, directory in members:
      check(member, directory, False)
    yield preemption
    if preemption.requested is not None:  # it came after the last step (or while a finished run was evaluated):
      raise Preempted(config.num_train_steps, workdir)  # stop a sweep here too, not at its next run
