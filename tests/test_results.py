"""results/: every measured file carries its stamp (command, commit, date, machine, versions), so that a stale
number shows and its command regenerates it; every sweep's report rebuilds from its committed run records."""

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


EXPERIMENTS = os.path.join(RESULTS, 'experiments')
REPORT_KEYS = ('summary', 'comparisons', 'budgets', 'conclusion', 'learning_rates', 'curves', 'invariance')
# Studies whose run records were not kept (a stamp naming a --report_only on a temporary workdir): none is left;
# such a study is trained again with --records=results/runs/NAME, and a new file may not join this set.
RECORDS_LOST: set[str] = set()


def _sweep_files() -> dict[str, dict]:
  """results/experiments files of sweeps (their report's tables), by name."""
  found = {}
  for name in sorted(os.listdir(EXPERIMENTS)):
    record = json.load(open(os.path.join(EXPERIMENTS, name)))
    if 'summary' in record:
      found[name.removesuffix('.json')] = record
  return found


def _rebuild_command(record: dict) -> str:
  """The stamped command that rebuilds a report from its records: 'rebuild_command' (stamped beside the training
  command by --records), or the 'command' of a report rebuilt with --report_only."""
  return record.get('rebuild_command', record['command'])


def _records_dir(command: str) -> str | None:
  """The committed run records a stamped command reads (its --workdir under results/runs), or None."""
  workdir = next((a.split('=', 1)[1] for a in command.split() if a.startswith('--workdir=')), '')
  return workdir if workdir.startswith('results/runs/') else None


def test_every_sweep_result_names_committed_records_or_is_listed_as_lost():
  missing = {name for name, record in _sweep_files().items() if not _records_dir(_rebuild_command(record))}
  assert missing == RECORDS_LOST


REBUILDABLE = sorted(name for name, record in _sweep_files().items() if _records_dir(_rebuild_command(record)))


@pytest.mark.parametrize('name', REBUILDABLE)
def test_a_sweep_report_rebuilds_from_its_committed_records_to_the_same_numbers(name, tmp_path):
  """The stamp names the command that trains the study from scratch and the one that rebuilds it from its records;
  the latter, run on a copy of the committed records, writes the committed tables."""
  import shutil
  import subprocess
  import sys
  committed = _sweep_files()[name]
  assert committed.get('train_command') and committed.get('rebuild_command'), 'its stamp names both commands'
  root = os.path.dirname(RESULTS)
  records = tmp_path / 'records'
  command = _rebuild_command(committed)
  shutil.copytree(os.path.join(root, _records_dir(command)), records)
  args = [a for a in command.split()[2:] if not a.startswith(('--workdir=', '--out='))]
  proc = subprocess.run([sys.executable, 'launch.py', *args, f'--workdir={records}', f'--out={tmp_path / "out.json"}'],
                        capture_output=True, text=True, cwd=root, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rebuilt = json.load(open(tmp_path / 'out.json'))
  for key in REPORT_KEYS:
    assert rebuilt.get(key) == committed.get(key), key
