"""Run records: names formatted and parsed in one place, each the other's inverse; result.json's typed, versioned
schema, and the flat schema of earlier records read as well."""

import os

import pytest

from cnnjax import records


@pytest.mark.parametrize('name,run,lr_dir', [
    (records.RunName('pool=max', 3, 0.003), 'pool=max,seed=3', 'lr=0.003'),
    (records.RunName('conv_stride2', 0), 'conv_stride2,seed=0', ''),
    (records.RunName('base', None, 1e-4), 'base', 'lr=0.0001'),
    (records.RunName('features=8-16,seed_like', None, 0.0316), 'features=8-16,seed_like', 'lr=0.0316'),
])
def test_a_run_name_is_formatted_and_parsed_back(name, run, lr_dir):
  assert (name.run, name.lr_dir) == (run, lr_dir)
  assert records.RunName.parse(run, lr_dir) == name


def _record(**changes):
  pick = records.LrPick(3e-3, 'val_accuracy', (1e-3, 3e-3, 1e-2), (0.8, 0.9, None), extensions=0,
                        picked_by='pool=max,seed=0')
  fields = {'name': 'pool=max,seed=1', 'point': 'pool=max', 'overrides': {'model.pool': 'max', 'seed': 1}, 'seed': 1,
            'metrics': {'train_loss': 0.3, 'val_accuracy': 0.9, 'test_accuracy': 0.89}, 'num_params': 8718,
            'flops': 1.5e6, 'steps_per_sec': 12.0, 'wall_time_s': 40.0, 'selected_step': 90, 'lr': pick,
            'invariance': {'shift': [0, 1], 'accuracy': [0.89, 0.8]}}
  return records.RunResult(**{**fields, **changes})


def test_a_run_result_goes_through_json_and_back_unchanged():
  import json
  for record in (_record(), _record(lr=None, selected_step=None, invariance=None)):
    written = json.loads(json.dumps(record.to_json()))
    assert written['schema'] == records.SCHEMA and records.RunResult.from_json(written) == record
  assert _record().lr.by_rate() == {1e-3: 0.8, 3e-3: 0.9, 1e-2: None}


def test_a_flat_schema_1_result_json_from_the_committed_study_reads_as_a_record():
  """results/runs/ holds records written before the schema had a version: each reads, its pick typed (and the
  versioned records beside them read too)."""
  import glob
  import json
  import os
  paths = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'results', 'runs', '*', '*',
                                        'result.json')))
  flats = []
  for path in paths:
    with open(path) as f:
      found = json.load(f)
    record = records.RunResult.from_json(found)
    if 'schema' not in found:
      flats.append((found, record))
  assert flats
  for flat, record in flats:
    assert record.name == flat['name'] and record.metrics['test_accuracy'] == flat['test_accuracy']
    assert not any(k.endswith('_by_lr') or k.startswith('picked') for k in record.metrics)
    if 'picked_lr' in flat:
      assert (record.lr.picked, list(record.lr.grid)) == (flat['picked_lr'], flat['lr_grid'])
      assert list(record.lr.scores) == flat[f'{record.lr.metric}_by_lr']


def test_a_record_of_a_later_schema_or_missing_a_field_is_refused(tmp_path):
  from cnnjax import errors, sweep
  with pytest.raises(ValueError, match='schema 3 is newer'):
    records.RunResult.from_json({**_record().to_json(), 'schema': 3})
  (tmp_path / sweep.RESULT_FILE).write_text('{"schema": 2, "name": "a"}')
  with pytest.raises(errors.DamagedFile, match='is not a run\'s record'):
    sweep.load_result(str(tmp_path))


def test_kept_records_hold_no_checkpoints_and_rebuild_the_same_report(config, data_dir, tmp_path):
  import json

  from cnnjax import sweep
  config.num_train_steps, config.checkpoint_every_steps = 4, 4
  get_sweep = lambda: [{'model.pool': 'max'}, {'model.pool': 'avg'}]  # noqa: E731
  sweep.run(config, get_sweep, str(tmp_path / 'work'), data_dir)
  sweep.keep_records(str(tmp_path / 'work'), str(tmp_path / 'records'))
  kept = {os.path.relpath(os.path.join(p, n), tmp_path / 'records') for p, _, names in os.walk(tmp_path / 'records')
          for n in names}
  assert {'pool=max/result.json', 'pool=max/config.json', 'pool=max/metrics.jsonl', 'report.md'} <= kept
  assert not any('checkpoint' in k or 'events.out' in k for k in kept)
  sweep.run(config, get_sweep, str(tmp_path / 'records'), report_only=True)
  before, after = (json.load(open(tmp_path / d / 'results.json')) for d in ('work', 'records'))
  assert before['summary'] == after['summary'] and before['comparisons'] == after['comparisons']


def test_the_stamped_commands_train_into_a_workdir_and_rebuild_from_the_records():
  from cnnjax import sweep
  got = sweep.commands('fm', 'results/runs/fm', ['launch.py', '--experiment=fm', '--workdir', '/tmp/x',
                                                 '--config.seeds=5', '--out=results/experiments/fm.json'])
  assert got == {
      'train_command': 'python launch.py --experiment=fm --config.seeds=5 --out=results/experiments/fm.json '
                       '--workdir=/tmp/cnnjax/fm --records=results/runs/fm',
      'rebuild_command': 'python launch.py --experiment=fm --config.seeds=5 --out=results/experiments/fm.json '
                         '--workdir=results/runs/fm --report_only'}
