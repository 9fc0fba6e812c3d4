"""The stamp every results/ file carries."""

import json
import sys

from cnnjax import stamp


def test_the_stamp_names_command_commit_date_machine_and_versions(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['launch.py', '--experiment=shapes'])
  s = stamp.stamp()
  assert s['command'] == 'python launch.py --experiment=shapes'
  assert s['commit'] and s['date'].endswith('UTC') and 'cores' in s['machine']
  assert s['versions'].startswith('Python ') and 'jax ' in s['versions'] and 'flax ' in s['versions']
  stamp.write(str(tmp_path / 'a' / 'b.json'), {**s, 'x': 1})
  assert json.loads((tmp_path / 'a' / 'b.json').read_text())['x'] == 1
