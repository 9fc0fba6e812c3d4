"""The stamp every results/ file carries."""

import json
import subprocess
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


def test_the_commit_is_marked_for_changed_code_but_not_for_changed_results(tmp_path):
  def git(*args):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=tmp_path, check=True,
                   capture_output=True)
  (tmp_path / 'results').mkdir()
  (tmp_path / 'results' / 'report.md').write_text('a')
  (tmp_path / 'train.py').write_text('a')
  git('init', '-q')
  git('add', '.')
  git('commit', '-qm', 'x')
  head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=tmp_path, capture_output=True,
                        text=True).stdout.strip()
  (tmp_path / 'results' / 'report.md').write_text('b')  # a sweep rewrote its report
  (tmp_path / 'new.py').write_text('untracked')
  assert stamp.commit(str(tmp_path)) == head
  (tmp_path / 'train.py').write_text('b')
  assert stamp.commit(str(tmp_path)) == head + '+uncommitted changes'
