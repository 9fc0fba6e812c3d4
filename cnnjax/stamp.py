"""The stamp every results/ file carries: the command that wrote it, the commit, the date, the machine and the
library versions, so that a stale number shows and one command regenerates it."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import jax

from cnnjax import files


def _cpu() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown'


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit(root: str = ROOT) -> str:
  """HEAD's short hash, marked '+uncommitted changes' where a tracked file outside results/ differs from it:
  results/ holds what runs write (a sweep's report among its run records), not what produced them."""
  try:
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.', ':!results'],
                           cwd=root, capture_output=True, text=True).stdout.strip()
    return head + ('+uncommitted changes' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def stamp() -> dict[str, str]:
  """{command, commit, date, machine, devices, versions} of this process."""
  import flax
  devices = jax.devices()
  return {
      'command': ' '.join(['python', *sys.argv]),
      'commit': commit(),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'machine': f'{_cpu()}, {os.cpu_count()} cores',
      'devices': f'{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})',
      'versions': f'Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}',
  }


def write(path: str | None, result: dict) -> None:
  """Writes ``result`` (a stamped measurement) as JSON to ``path``, making its directory; nothing for None."""
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_json(path, result, sort_keys=False)
