"""Sweeps: expansion over seeds, --sweep_index, learning-rate grids, end to end on tiny configs."""

import functools
import json
import os
import time
import types

import pytest

from cnnjax import errors, records, sweep, train
from cnnjax.cli import load_experiment
from cnnjax.config import ConfigError, apply_overrides
from cnnjax.errors import NoFinishedPoints


def test_point_names():
  assert sweep.point_name({'model.pool': 'max', 'model.stride': 2}) == 'pool=max,stride=2'
  assert sweep.point_name({'model.features': (8, 16)}) == 'features=8-16'
  assert sweep.point_name({'name': 'conv stride/2', 'model.stride': 2}) == 'conv_stride_2'


def test_expand_over_seeds():
  points = sweep.expand([{'model.pool': 'max'}, {'model.pool': 'avg'}], seeds=2, base_seed=5)
  assert [p.name for p in points] == ['pool=max,seed=5', 'pool=max,seed=6', 'pool=avg,seed=5', 'pool=avg,seed=6']
  assert points[1].overrides == {'model.pool': 'max', 'seed': 6} and points[1].group == 'pool=max'
  with pytest.raises(ConfigError, match='same name'):
    sweep.expand([{'model.pool': 'max'}, {'model.pool': 'max'}], seeds=1, base_seed=0)


def test_bad_sweep_index_and_bad_point_are_refused_before_writing(config, tmp_path):
  workdir = tmp_path / 'work'
  with pytest.raises(ConfigError, match=r'--sweep_index=2 is out of range: this sweep has 2 points \(0..1\)'):
    sweep.run(config, lambda: [{'model.stride': 1}, {'model.stride': 2}], str(workdir), sweep_index=2)
  with pytest.raises(ConfigError, match=r'sweep point stride=0: .*--config.model.stride=0'):
    sweep.run(config, lambda: [{'model.stride': 1}, {'model.stride': 0}], str(workdir))
  assert not workdir.exists()


def test_tiny_sweep_end_to_end_and_sweep_index(config, data_dir, tmp_path):
  config.num_train_steps, config.checkpoint_every_steps, config.analysis.invariance_shifts = 4, 4, 2

  def get_sweep():
    return [{'model.pool': 'max'}, {'model.pool': 'avg'}]

  one = tmp_path / 'one'
  sweep.run(config, get_sweep, str(one), data_dir, sweep_index=1)
  assert sorted(os.listdir(one)) == ['pool=avg'] and (one / 'pool=avg' / 'result.json').exists()
  sweep.run(config, get_sweep, str(one), data_dir, report_only=True)  # merges what is finished
  assert '| pool=avg |' in (one / 'report.md').read_text() and '| pool=max |' not in (one / 'report.md').read_text()

  full = tmp_path / 'full'
  sweep.run(config, get_sweep, str(full), data_dir)
  files = set(os.listdir(full))
  assert {'report.md', 'results.csv', 'results.json', 'test_accuracy_vs_params.png', 'test_accuracy_vs_flops.png',
          'test_accuracy_per_setting.png', 'learning_curves.png', 'invariance.png', 'filters.png'} <= files
  result = sweep.load_result(str(full / 'pool=max'))
  assert result.num_params == 8718 and len(result.invariance['accuracy']) == 3


def test_a_learning_rate_grid_picks_on_validation_and_reports_the_picks_test_metrics(config, data_dir, tmp_path):
  config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 6, 6, 6
  config.lr_grid, config.lr_grid_extensions = (1e-4, 3e-3, 1e-1), 0
  with pytest.raises(ConfigError, match=r"--config.baseline_point='pool=avg' is not a point of this sweep"):
    sweep.run(apply_overrides(config, {'baseline_point': 'pool=avg'}), lambda: [{'model.pool': 'max'}], str(tmp_path))
  sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path), data_dir)
  result = sweep.load_result(str(tmp_path / 'pool=max'))
  last = {}  # each trial's final rows, read from its own metrics.jsonl
  for lr in config.lr_grid:
    rows = [json.loads(line) for line in open(tmp_path / 'pool=max' / f'lr={lr:g}' / 'metrics.jsonl')]
    last[lr] = {k: v for r in rows if r.get('step') == 6 for k, v in r.items()}
  best = max(config.lr_grid, key=lambda lr: last[lr]['val_accuracy'])
  assert (result.lr.picked, result.lr.metric) == (best, 'val_accuracy')
  assert list(result.lr.scores) == [last[lr]['val_accuracy'] for lr in config.lr_grid]
  assert result.metrics['test_accuracy'] == last[best]['test_accuracy']  # the pick's test metrics only
  assert result.lr.on_edge == (best != 3e-3)
  text = (tmp_path / 'report.md').read_text()
  assert '| point | picked by | grid tried | lr 0.0001 | lr 0.003 | lr 0.1 |' in text and 'picked lr' in text
  values = ' | '.join(f"{last[lr]['val_accuracy']:.4g}" for lr in config.lr_grid)
  assert f'| pool=max | val_accuracy | 0.0001 … 0.1 (3) | {values} |' in text


def test_a_learning_rate_grid_needs_a_validation_split(config, tmp_path):
  config.lr_grid, config.data.val_fraction = (1e-3, 1e-2), 0.0
  with pytest.raises(ConfigError, match=r'--config.lr_grid=\(0.001, 0.01\) picks by the validation metric; set '
                                        r'--config.data.val_fraction > 0'):
    sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()


def test_seeds_on_an_experiment_without_a_sweep_are_honoured_as_a_one_point_sweep(config, data_dir, tmp_path):
  config.num_train_steps, config.seeds = 2, 2
  points = sweep.run_experiment(config, None, str(tmp_path), data_dir)
  assert [p.name for p in points] == ['base,seed=0', 'base,seed=1']
  results = [sweep.load_result(str(tmp_path / p.name)) for p in points]
  assert [r.seed for r in results] == [0, 1] and (tmp_path / 'report.md').exists()
  config.seeds = 1  # a single run, in the workdir itself
  single = sweep.run_experiment(config, None, str(tmp_path / 'single'), data_dir)
  assert isinstance(single, train.TrainResult)
  result = sweep.load_result(str(tmp_path / 'single'))  # a single run's record, as a sweep point's
  assert result.name == sweep.SINGLE_POINT and result.metrics['test_accuracy'] == single.metrics['test_accuracy']
  assert (tmp_path / 'single' / 'metrics.jsonl').exists()
  with pytest.raises(ConfigError, match='has no get_sweep'):
    sweep.run_experiment(config, None, str(tmp_path / 'x'), data_dir, sweep_index=0)


def test_sweep_of_turns_sweep_fields_into_a_one_point_sweep(config):
  assert sweep.sweep_of(config, None) is None
  for field, value in (('seeds', 3), ('lr_grid', (1e-3, 1e-2)), ('baseline_point', 'base')):
    changed = apply_overrides(config, {field: value})
    assert sweep.sweep_of(changed, None)() == [{'name': 'base'}]
  own = lambda: [{'model.pool': 'avg'}]  # noqa: E731
  assert sweep.sweep_of(config, own) is own


def test_a_report_of_a_sweep_with_no_finished_point_says_so(config, tmp_path):
  with pytest.raises(NoFinishedPoints, match='no finished sweep points in .* to report'):
    sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path / 'empty'), report_only=True)


def test_next_learning_rate_steps_past_the_edge_by_the_grids_ratio():
  grid = (1e-3, 3e-3, 1e-2)  # mean ratio sqrt(10)
  assert sweep.next_learning_rate(grid, grid, 1e-2) == 0.0316
  assert sweep.next_learning_rate(grid, [*grid, 0.0316], 0.0316) == 0.1  # from the grid's edge: stays round
  assert sweep.next_learning_rate(grid, grid, 1e-3) == 0.000316
  assert sweep.next_learning_rate(grid, grid, 3e-3) is None and sweep.next_learning_rate((1e-3,), (1e-3,), 1e-3) is None


class _Head:
  @staticmethod
  def selection():
    return 'val_accuracy', 1


def _fake_training(accuracy_by_lr, trained):
  """train_and_evaluate as a function of the learning rate only: accuracy_by_lr[lr], None for a divergence."""
  def fake(config, workdir, data_dir=None, overwrite=False):
    lr = config.optimizer.learning_rate
    trained.append(lr)
    if accuracy_by_lr[lr] is None:
      raise errors.NonFiniteLoss('the training loss is nan at step 3; no checkpoint was written yet')
    return train.TrainResult({'val_accuracy': accuracy_by_lr[lr]}, None, 0, types.SimpleNamespace(head=_Head()))
  return fake


@pytest.mark.parametrize('accuracy_by_lr,trained,picked,on_edge', [
    ({1e-3: 0.5, 3e-3: 0.7, 1e-2: 0.6}, [1e-3, 3e-3, 1e-2], 3e-3, False),  # interior: nothing more
    ({1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7, 0.0316: 0.8, 0.1: 0.75}, [1e-3, 3e-3, 1e-2, 0.0316, 0.1], 0.0316, False),
    ({1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7, 0.0316: 0.8, 0.1: 0.9}, [1e-3, 3e-3, 1e-2, 0.0316, 0.1], 0.1, True),  # limit
    ({1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7, 0.0316: None}, [1e-3, 3e-3, 1e-2, 0.0316], 1e-2, False),  # diverged above
    ({1e-3: 0.9, 3e-3: 0.6, 1e-2: 0.5, 0.000316: 0.8}, [1e-3, 3e-3, 1e-2, 0.000316], 1e-3, False),  # downwards
])
def test_a_pick_on_the_grids_edge_extends_the_grid_up_to_the_limit(config, tmp_path, monkeypatch, accuracy_by_lr,
                                                                  trained, picked, on_edge):
  calls = []
  monkeypatch.setattr(train, 'train_and_evaluate', _fake_training(accuracy_by_lr, calls))
  config.lr_grid, config.lr_grid_extensions = (1e-3, 3e-3, 1e-2), 2
  picks = sweep.pick_learning_rates({'p': config}, {'p': str(tmp_path)},
                                    functools.partial(sweep._train_alone, data_dir=None))
  result, choice, _ = picks['p']
  assert calls == trained and choice.picked == picked and choice.on_edge == on_edge
  assert list(choice.grid) == sorted(trained) and choice.extensions == len(trained) - 3
  assert list(choice.scores) == [accuracy_by_lr[lr] for lr in sorted(trained)]
  assert result.metrics['val_accuracy'] == accuracy_by_lr[picked]


def test_the_pooling_sweep_with_population_on_gives_the_runs_of_population_off_bit_for_bit(config, data_dir,
                                                                                          tmp_path):
  """The real pooling sweep (max, avg and no pooling, a stride-2 conv), 2 seeds x a grid of 2 rates, on 8
  devices: the same picks, grids, per-run validation and test metrics to the last bit whether
  each round's runs train as one population (population_map=auto: a loop on CPU, each member its solo run's
  program) or one by one; the populations' checkpoints are gone. (Under vmap, batched convolutions round
  differently and training amplifies it, fastest with max pooling's argmax: test_train.py bounds one step.)"""
  config.data.pipeline, config.rng_impl = 'device', 'threefry2x32'
  config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 12, 12, 6
  config.seeds, config.lr_grid, config.lr_grid_extensions = 2, (3e-3, 3e-2), 0
  points = {}
  for mode in ('off', 'on'):
    config.population = mode
    sweep.run(config, load_experiment('pooling').get_sweep, str(tmp_path / mode), data_dir)
    written = json.loads((tmp_path / mode / 'results.json').read_text())['points']
    points[mode] = [records.RunResult.from_json(r) for r in written]
  assert [r.name for r in points['on']] == [r.name for r in points['off']]
  assert len(points['on']) == 8 and len({r.lr.picked for r in points['off']}) == 2
  for on, off in zip(points['on'], points['off'], strict=True):
    assert on.lr == off.lr, on.name  # the pick, the rates tried and each one's validation accuracy
    for key in ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss'):
      assert on.metrics[key] == off.metrics[key], (on.name, key)
  assert not os.listdir(tmp_path / 'on' / sweep.POPULATIONS_DIR)


def test_lr_pick_point_lets_the_first_seed_pick_and_the_others_train_its_pick_only(config, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(train, 'train_and_evaluate', _fake_training({1e-3: 0.5, 3e-3: 0.7, 1e-2: 0.6}, calls))

  def finish(config, point, point_dir, trained, choice, seconds):
    os.makedirs(point_dir, exist_ok=True)
    record = records.RunResult(point.name, point.group, point.overrides, config.seed, {}, 0, 0, lr=choice)
    with open(os.path.join(point_dir, sweep.RESULT_FILE), 'w') as f:
      json.dump(record.to_json(), f)

  monkeypatch.setattr(sweep, 'finish_point', finish)
  config.seeds, config.lr_grid, config.lr_grid_extensions, config.lr_pick = 3, (1e-3, 3e-3, 1e-2), 2, 'point'

  def get_sweep():
    return [{'model.pool': 'avg'}]

  sweep.run(config, get_sweep, str(tmp_path), sweep_index=2)  # seed 2 alone: seed 0 picks first
  assert calls == [1e-3, 3e-3, 1e-2, 3e-3]
  sweep.run(config, get_sweep, str(tmp_path), sweep_index=1)
  assert calls[4:] == [3e-3]
  lead = sweep.load_result(str(tmp_path / 'pool=avg,seed=0'))
  assert (lead.lr.picked, lead.lr.grid, lead.lr.picked_by) == (3e-3, (1e-3, 3e-3, 1e-2), None)
  for seed in (1, 2):
    other = sweep.load_result(str(tmp_path / f'pool=avg,seed={seed}'))
    assert (other.lr.picked, other.lr.grid, other.lr.picked_by) == (3e-3, (3e-3,), 'pool=avg,seed=0')


@pytest.mark.parametrize('steps', [1, 10, 'auto'])
def test_analyze_reads_no_data_and_takes_any_steps_per_dispatch(config, data_dir, steps):
  """--analyze builds the model only: a steps_per_dispatch that training on the device pipeline takes is no
  reason to refuse it (the analysis picks no pipeline)."""
  config.data.pipeline, config.steps_per_dispatch = 'auto', steps
  table = sweep.analyze(config, None, data_dir)
  assert table.startswith('Input 32x32x3.') and '## ' not in table and 'block0.conv' in table  # no heading alone


def test_a_task_waits_for_the_lead_that_another_task_trains_and_stops_when_it_fails(config, tmp_path, monkeypatch):
  """lr_pick=point: while another process holds the lead's point directory, a task waits (trains nothing); when
  that process fails, leaving why, the task stops with that reason in one line."""
  import subprocess
  import sys
  import threading
  monkeypatch.setattr(sweep, 'PICK_POLL_S', 0.05)
  lead = sweep.Point('p,seed=0', 'p', {'seed': 0})
  lead_dir = tmp_path / lead.name
  holder = subprocess.Popen([sys.executable, '-c', 'import time; from cnnjax import workdirs\n'
                             f'with workdirs.WorkdirLock({str(lead_dir)!r}):\n'
                             '  print("held", flush=True); time.sleep(300)'], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  trained = []

  def fail_later():
    time.sleep(0.5)
    (lead_dir / sweep.PICK_FAILED).write_text('every learning rate of [1.0] diverged; lower --config.lr_grid')
    holder.kill()
  threading.Thread(target=fail_later).start()
  with pytest.raises(errors.PickFailed, match=r"^p,seed=0 picks the learning rate for p's seeds and failed: every "
                                              r'learning rate of \[1.0\] diverged; lower --config.lr_grid$'):
    sweep.lead_pick({lead.name: config}, lead, str(tmp_path), trainer=lambda trials: trained.append(trials))
  holder.wait()
  assert not trained


def test_a_tiny_sweep_with_three_budgets_writes_verdicts_by_budget_and_their_plot(config, data_dir, tmp_path):
  config = apply_overrides(config, {'optimizer.schedule': 'wsd', 'optimizer.warmup_steps': 2, 'num_train_steps': 16,
                                    'budgets': (0.25, 0.5, 1.0), 'log_every_steps': 4, 'eval_every_steps': 4,
                                    'checkpoint_every_steps': 8, 'seeds': 2})
  sweep.run(config, lambda: [{'model.pool': 'max'}, {'model.pool': 'avg'}], str(tmp_path), data_dir)
  result = sweep.load_result(str(tmp_path / 'pool=avg,seed=1'))
  assert {'budget=0.25/test_accuracy', 'budget=0.5/test_accuracy', 'budget=1/test_accuracy'} <= set(result.metrics)
  assert (tmp_path / 'pool=avg,seed=1' / 'budget=0.25' / 'metrics.jsonl').exists()
  text = (tmp_path / 'report.md').read_text()
  assert 'Verdicts by budget' in text and (tmp_path / 'test_accuracy_difference_by_budget.png').exists()
  rows = [line for line in text.splitlines() if line.startswith('| pool=avg | 0.') and '±' not in line]
  assert [row.split('|')[2].strip() for row in rows] == ['0.25', '0.5']  # then budget 1
  assert any(phrase in text for phrase in ('holds at every budget', 'changes sign', 'significant only at',
                                           'no significant difference at any budget'))
  seeds = [sweep.load_result(str(tmp_path / f'pool=avg,seed={s}')).metrics['budget=0.25/test_accuracy'] for s in (0, 1)]
  means = next(line for line in text.splitlines() if line.startswith('| pool=avg | ') and '±' in line.split('|')[2])
  assert means.split('|')[2].strip().startswith(f'{sum(seeds) / 2:.4f} ± ')  # budget 0.25's mean over the seeds
  sweep.write_out(str(tmp_path / 'out.json'), 'tiny', [None] * 4, str(tmp_path), 1.0)  # --out carries the table
  assert 'Verdicts by budget' in json.load(open(tmp_path / 'out.json'))['budgets']


def test_halving_picks_each_budgets_rate_on_the_mean_over_seeds_and_stops_the_dropped_rates(config, data_dir,
                                                                                             tmp_path):
  config = apply_overrides(config, {'optimizer.schedule': 'wsd', 'optimizer.warmup_steps': 2, 'num_train_steps': 16,
                                    'budgets': (0.5, 1.0), 'log_every_steps': 2, 'eval_every_steps': 4,
                                    'checkpoint_every_steps': 8, 'seeds': 2, 'lr_grid': (1e-3, 1e-2, 1e-1),
                                    'lr_grid_extensions': 0, 'lr_pick': 'halving'})
  sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path), data_dir)
  seeds = ('pool=max,seed=0', 'pool=max,seed=1')

  def val_at(seed, lr, branch=''):
    rows = sweep.read_metrics(str(tmp_path / seed / f'lr={lr:g}' / branch))
    return [r['val_accuracy'] for r in rows if 'val_accuracy' in r][-1]
  means = {lr: sum(val_at(s, lr, 'budget=0.5') for s in seeds) / 2 for lr in (1e-3, 1e-2, 1e-1)}
  picked = max(means, key=lambda lr: (means[lr], -lr))
  result = sweep.load_result(str(tmp_path / seeds[1]))
  assert result.metrics['budget=0.5/learning_rate'] == picked and result.lr.picked_by == 'halving'
  dropped = min(means, key=lambda lr: (means[lr], -lr))  # the worse half of three: one rate stops at budget 0.5
  stopped = train.checkpointing.Checkpoints(str(tmp_path / seeds[0] / f'lr={dropped:g}'))
  assert stopped.latest_step() == 6  # its constant phase to budget 0.5's branch step (8 - 0.2 x 8), no further
  stopped.close()
  final = result.metrics['budget=1/learning_rate']
  assert final != dropped and result.lr.picked == final
  assert result.metrics['test_accuracy'] == result.metrics['budget=1/test_accuracy']
  assert 'Learning rate picked at each budget' in (tmp_path / 'report.md').read_text()


def test_halving_needs_a_grid_budgets_and_one_task_per_setting(config, tmp_path):
  with pytest.raises(ConfigError, match='--config.lr_pick=halving picks a rate at each budget'):
    sweep.run(apply_overrides(config, {'lr_pick': 'halving', 'lr_grid': (1e-3, 1e-2)}),
              lambda: [{'model.pool': 'max'}], str(tmp_path))
  halving = apply_overrides(config, {'lr_pick': 'halving', 'lr_grid': (1e-3, 1e-2), 'budgets': (0.5, 1.0),
                                     'optimizer.schedule': 'wsd', 'optimizer.warmup_steps': 2})
  with pytest.raises(ConfigError, match='drop --sweep_index'):
    sweep.run(halving, lambda: [{'model.pool': 'max'}], str(tmp_path), sweep_index=0)
