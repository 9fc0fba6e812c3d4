"""Every expected failure is a CnnjaxError, which launch.py prints in one line without a traceback."""

import inspect

from cnnjax import errors


def test_every_error_is_an_expected_failure_with_a_docstring():
  classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
  assert len(classes) >= 8
  for c in classes:
    assert issubclass(c, errors.CnnjaxError) and c.__doc__, c
  assert issubclass(errors.DownloadTimeout, errors.DataError) and issubclass(errors.ConfigError, ValueError)
