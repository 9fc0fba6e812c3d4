"""Every expected stop is a CnnjaxError, which launch.py prints in one line (its heading, then the message) and
exits with its status, without a traceback."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import cnnjax
from cnnjax import errors


def _exception_classes():
  """Every exception class that a module of cnnjax defines (its datasets' builders aside)."""
  for info in pkgutil.iter_modules(cnnjax.__path__):
    if info.ispkg:
      continue
    module = importlib.import_module(f'cnnjax.{info.name}')
    for _, c in inspect.getmembers(module, inspect.isclass):
      if c.__module__ == module.__name__ and issubclass(c, BaseException):
        yield c


def test_every_exception_cnnjax_defines_is_an_expected_stop_with_a_docstring():
  classes = set(_exception_classes())
  assert {errors.ConfigError, errors.NonFiniteLoss, errors.Preempted, errors.StorageError} <= classes
  for c in classes:
    assert issubclass(c, errors.CnnjaxError) and c.__doc__, c
    assert c.heading and c.exit_status in (0, 1), c
  assert issubclass(errors.DownloadTimeout, errors.DataError) and issubclass(errors.ConfigError, ValueError)
  assert [c for c in classes if c.exit_status == 0] == [errors.Preempted]  # the one clean stop


LAUNCH_STUB = '''
import sys
from absl import app
import launch
from cnnjax import errors, sweep
def fail(*args, **kwargs):
  raise {error}
sweep.run_experiment = fail
sys.argv = ['launch.py', '--workdir=/tmp/cnnjax-unused']
app.run(launch.main, flags_parser=launch.parse_flags_with_experiment)
'''


@pytest.mark.parametrize('error,status,line', [
    ("errors.ConfigError('--config.x=1 is bad; use 2')", 1, 'Invalid config: --config.x=1 is bad; use 2'),
    ("errors.NonFiniteLoss('the training loss is nan at step 3')", 1, 'Stopped: the training loss is nan at step 3'),
    ("errors.StorageError('writing x failed')", 1, 'Stopped: writing x failed'),
    ("errors.Preempted(7, '/w')", 0, 'Preempted: saved a checkpoint at step 7 in /w; re-run the same command'),
])
def test_the_launcher_stops_on_each_kind_in_one_line(error, status, line):
  proc = subprocess.run([sys.executable, '-c', LAUNCH_STUB.format(error=error)], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == status, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and line in proc.stderr, proc.stderr[-2000:]
  assert sum('Stopped' in x or 'Invalid config' in x or 'Preempted:' in x for x in proc.stderr.splitlines()) == 1
