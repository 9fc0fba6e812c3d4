"""The failures cnnjax expects, each named for what it is. Their messages are one line that names the cause and
the fix; ``launch.py`` prints them without a traceback. This module imports nothing, so every module can raise
them."""


class CnnjaxError(Exception):
  """An expected stop: bad input, a busy or damaged file, a fault of the machine, a diverged loss, a signal. The
  message is one line; ``launch.py`` prints it after ``heading`` and exits with ``exit_status``."""
  heading = 'Stopped'
  exit_status = 1


class ConfigError(CnnjaxError, ValueError):
  """A config that cannot train; the message names the flag and the fix."""
  heading = 'Invalid config'


class WorkdirInUse(CnnjaxError):
  """Another process holds a run's lock; the message names the holder."""


class DataError(CnnjaxError):
  """Data that cannot be had, or prepared data that is damaged; the message says how to get it anew."""


class DownloadTimeout(DataError):
  """A download did not finish in time. Its thread may still be retrying, so ``launch.py`` ends the process at
  once rather than waiting for it."""


class DamagedFile(CnnjaxError):
  """A file cnnjax wrote (config.json, result.json, a manifest) cannot be read back."""


class StorageError(CnnjaxError):
  """A write failed (full disk, read-only filesystem, no permission, a file where a directory should be); the
  message says what failed, where, what is intact and the fix."""


class PickFailed(CnnjaxError):
  """The seed that picks a sweep point's learning rate (``lr_pick='point'``) failed in another task; the message
  says why."""


class NoFinishedPoints(CnnjaxError):
  """A sweep's report was asked for (--report_only) where no point has finished."""


class NonFiniteLoss(CnnjaxError):
  """The training loss became NaN or Inf; no checkpoint of the bad state was written."""


class Preempted(CnnjaxError):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint; re-run the same command to resume. A clean
  stop: exit status 0."""
  heading = 'Preempted'
  exit_status = 0

  def __init__(self, step: int, workdir: str):
    super().__init__(f'saved a checkpoint at step {step} in {workdir}; re-run the same command to resume')
    self.step = step
