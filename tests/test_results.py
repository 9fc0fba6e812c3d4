"""results/: every measured file carries its stamp (command, commit, date, machine, versions), so that a stale
number shows and its command regenerates it."""

import json
import os

import pytest

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results')
RUNS = os.path.join(RESULTS, 'runs')  # run records (sweep workdirs without checkpoints), not stamped files
FILES = sorted(os.path.join(root, name) for root, _, names in os.walk(RESULTS) for name in names
               if name.endswith('.json') and not (root + os.sep).startswith(RUNS + os.sep))


@pytest.mark.parametrize('path', FILES, ids=[os.path.relpath(p, RESULTS) for p in FILES])
def test_every_results_file_carries_its_stamp(path):
  result = json.load(open(path))
  for key in ('command', 'commit', 'date', 'machine', 'versions'):
    assert result.get(key), f'{path} has no {key!r}'
  assert result['command'].startswith('python benchmarks/') or result['command'].startswith('python launch.py')


def test_there_are_results():
  assert FILES, 'results/ holds no measured file'
