"""Sweeps, the report and the analysis: expansion, --sweep_index, reports from fake runs, closed forms."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import analysis, models, report, sweep, train
from cnnjax.config import ConfigError, apply_overrides, experiment_names, load_experiment


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


def test_apply_overrides_copies_and_checks_fields(config):
  changed = apply_overrides(config, {'model.stride': 2, 'name': 'x', 'head': 'binary'})
  assert (changed.model.stride, changed.head, config.model.stride, config.head) == (2, 'binary', 1, 'multiclass')
  for path in ('model.strid', 'modle.stride', 'seed.x'):
    with pytest.raises(ConfigError, match=f"'{path}' is not a config field"):
      apply_overrides(config, {path: 2})


def test_bad_sweep_index_and_bad_point_are_refused_before_writing(config, tmp_path):
  workdir = tmp_path / 'work'
  with pytest.raises(ConfigError, match=r'--sweep_index=2 is out of range: this sweep has 2 points \(0..1\)'):
    sweep.run(config, lambda: [{'model.stride': 1}, {'model.stride': 2}], str(workdir), sweep_index=2)
  with pytest.raises(ConfigError, match=r'sweep point stride=0: .*--config.model.stride=0'):
    sweep.run(config, lambda: [{'model.stride': 1}, {'model.stride': 0}], str(workdir))
  assert not workdir.exists()


def _fake_result(name, pool, seed, accuracy):
  return {'name': name, 'point': name.split(',seed=')[0], 'overrides': {'model.pool': pool, 'seed': seed},
          'seed': seed, 'num_params': 100,
          'flops': 1000, 'test_accuracy': accuracy, 'test_loss': 1 - accuracy, 'train_loss': 0.5,
          'steps_per_sec': 10.0, 'wall_time_s': 3.0,
          'invariance': {'shift': [0, 1], 'accuracy': [accuracy, accuracy - 0.1], 'agreement': [1.0, 0.8],
                         'consistent_correct': [accuracy, accuracy - 0.2]}}


def test_report_from_fake_finished_runs(tmp_path):
  results = [_fake_result('pool=max,seed=0', 'max', 0, 0.8), _fake_result('pool=max,seed=1', 'max', 1, 0.9),
             _fake_result('pool=avg,seed=0', 'avg', 0, 0.7), _fake_result('pool=avg,seed=1', 'avg', 1, 0.7)]
  histories = {r['name']: [{'step': 1, 'train_loss': 1.0}, {'step': 2, 'train_loss': 0.5, 'val_accuracy': 0.8}]
               for r in results}
  report.write(str(tmp_path), results, histories)
  text = (tmp_path / 'report.md').read_text()
  # point | seeds | pool | params | flops | train_loss | test_accuracy: mean ± sample std of (0.8, 0.9) | test_loss
  assert '| pool=max | 2 | max | 100 | 1,000 | 0.5 | 0.85 ± 0.071 | 0.15 ± 0.071 |' in text
  assert '| pool=avg | 2 | avg | 100 | 1,000 | 0.5 | 0.7 | 0.3 |' in text
  assert '| pool=avg | 2 | 0.7000 ± 0.0000 | -0.1500 |' in text  # the comparison with the first point
  assert '| pool=max | 0.8500 | 0.7500 | 0.8000 | 0.6500 |' in text  # invariance at 1 px, mean over seeds
  for png in ('test_accuracy_vs_params.png', 'test_accuracy_vs_flops.png', 'test_accuracy_per_setting.png',
              'learning_curves.png', 'invariance.png'):
    assert (tmp_path / png).stat().st_size > 1000 and f'({png})' in text
  assert len((tmp_path / 'results.csv').read_text().splitlines()) == 5
  assert len(json.loads((tmp_path / 'results.json').read_text())['summary']) == 2


def test_welch_interval_and_p_value_against_the_formulas():
  """Welch's difference, Welch-Satterthwaite degrees of freedom, t interval and p-value, by hand."""
  import scipy.stats
  a, b = [0.91, 0.93, 0.92], [0.88, 0.90, 0.87, 0.89]
  va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
  df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
  diff, se = np.mean(a) - np.mean(b), np.sqrt(va + vb)
  w = report.welch(a, b)
  half = scipy.stats.t.ppf(0.975, df) * se
  np.testing.assert_allclose([w['diff'], w['low'], w['high']], [diff, diff - half, diff + half], rtol=1e-9)
  np.testing.assert_allclose(w['p'], 2 * scipy.stats.t.sf(diff / se, df), rtol=1e-9)
  mean, half = report.interval(a)
  np.testing.assert_allclose(half, scipy.stats.t.ppf(0.975, 2) * np.std(a, ddof=1) / np.sqrt(3))
  assert np.isnan(report.welch([0.9], b)['p']) and np.isnan(report.interval([0.9])[1])


def test_significance_table_names_the_verdicts(tmp_path):
  results = [_fake_result(f'pool={p},seed={i}', p, i, acc)
             for p, accs in (('max', (0.90, 0.91, 0.92)), ('avg', (0.80, 0.81, 0.82)), ('none', (0.89, 0.93, 0.91)))
             for i, acc in enumerate(accs)]
  text = report.significance_table(results)
  assert '| pool=max | 3 | 0.9100 ± 0.0248 | (baseline) |' in text
  assert '| pool=avg | 3 | 0.8100 ± 0.0248 | -0.1000 |' in text and 'significantly lower |' in text
  assert '| pool=none | 3 | 0.9100 ± 0.0497 | +0.0000 |' in text and 'no significant difference |' in text
  assert '| pool=max | 3 | 0.9100 ± 0.0248 | -0.1000 |' not in report.significance_table(results, 'pool=avg')


def test_shift_invariance_of_a_constant_predictor_is_its_accuracy_not_one():
  """A model that answers class 0 for everything agrees with itself under every shift; correct-both-times
  stays at its accuracy (the share of class 0)."""
  images = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype(np.float32)
  targets = np.array([0, 0, 0, 1, 2, 3, 4, 5, 1, 2])
  constant = lambda variables, x: jnp.zeros((len(x), 6)).at[:, 0].set(1.0)  # noqa: E731
  result = analysis.shift_invariance(constant, {}, images, targets, 2)
  assert result['agreement'] == [1.0] * 3 and result['accuracy'] == [0.3] * 3
  assert result['consistent_correct'] == [0.3] * 3


def test_analysis_reproduces_the_seed_numbers(config):
  # One 3x3 conv on a 224x224 single-channel map: 9 weights (+1 bias) against 224^4 for a dense layer of the
  # same input and output size; 2x2 pooling then gives 112x112.
  config.model.features, config.model.dense = (1,), (1,)
  rows = analysis.analyze(config.model, (224, 224, 1), num_outputs=1)
  conv, pool = rows[0], rows[1]
  assert (conv.output_shape, conv.params - 1, conv.dense_equivalent) == ((224, 224, 1), 9, 224 * 224 * 224 * 224)
  assert pool.output_shape == (112, 112, 1)


def test_analysis_closed_forms_for_tiny(config):
  rows = analysis.analyze(config.model, (32, 32, 3), num_outputs=6)
  by_name = {r.name: r for r in rows}
  assert [r.receptive_field for r in rows[:4]] == [3, 4, 8, 10]  # 3; 3+1*1; 4+2*2; 8+1*2
  assert by_name['block0.conv'].flops == 2 * 9 * 3 * 4 * 32 * 32 and by_name['dense0'].flops == 2 * 512 * 16
  assert analysis.totals(rows)['params'] == 8718  # as counted by hand in test_models
  model = models.build_model(config.model, 6)
  assert abs(analysis.xla_flops(model, (32, 32, 3)) / analysis.totals(rows)['flops'] - 1) < 0.1


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
  result = json.loads((full / 'pool=max' / 'result.json').read_text())
  assert result['num_params'] == 8718 and len(result['invariance']['accuracy']) == 3


@pytest.mark.parametrize('name', experiment_names())
def test_every_experiment_and_sweep_point_is_a_valid_config(name):
  module = load_experiment(name)
  config = module.get_config()
  points = sweep.expand(module.get_sweep(), config.seeds, config.seed) if hasattr(module, 'get_sweep') else []
  for point in points or [sweep.Point('config', 'config', {})]:
    train.validate(apply_overrides(config, point.overrides), 8)
  assert module.__doc__ and f'--experiment={name}' in module.__doc__  # the docstring gives the command


def test_a_learning_rate_grid_picks_on_validation_and_reports_the_picks_test_metrics(config, data_dir, tmp_path):
  config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 6, 6, 6
  config.lr_grid = (1e-4, 3e-3, 1e-1)
  with pytest.raises(ConfigError, match=r"--config.baseline_point='pool=avg' is not a point of this sweep"):
    sweep.run(apply_overrides(config, {'baseline_point': 'pool=avg'}), lambda: [{'model.pool': 'max'}], str(tmp_path))
  sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path), data_dir)
  result = json.loads((tmp_path / 'pool=max' / 'result.json').read_text())
  last = {}  # each trial's final rows, read from its own metrics.jsonl
  for lr in config.lr_grid:
    rows = [json.loads(line) for line in open(tmp_path / 'pool=max' / f'lr={lr:g}' / 'metrics.jsonl')]
    last[lr] = {k: v for r in rows if r.get('step') == 6 for k, v in r.items()}
  best = max(config.lr_grid, key=lambda lr: last[lr]['val_accuracy'])
  assert result['picked_lr'] == best and result['val_accuracy_by_lr'] == [last[lr]['val_accuracy']
                                                                          for lr in config.lr_grid]
  assert result['test_accuracy'] == last[best]['test_accuracy']  # the pick's test metrics only
  assert result['picked_on_edge'] == (best != 3e-3)
  text = (tmp_path / 'report.md').read_text()
  assert '| point | picked by | lr 0.0001 | lr 0.003 | lr 0.1 |' in text and 'picked lr' in text
  values = ' | '.join(f"{last[lr]['val_accuracy']:.4g}" for lr in config.lr_grid)
  assert f'| pool=max | val_accuracy | {values} |' in text


def test_the_grid_table_names_each_points_own_selection_metric():
  """A sweep whose points pick by different metrics (classification: accuracy; regression: loss), as the
  heads sweep does: one row each, with its own metric."""
  common = {'lr_grid': [1e-3, 1e-2], 'picked_lr': 1e-2, 'picked_on_edge': True}
  results = [{'point': 'head=multiclass', 'val_accuracy_by_lr': [0.5, 0.75], **common},
             {'point': 'head=regression', 'val_loss_by_lr': [2.0, 1.5], **common}]
  text = report.grid_table(results)
  assert '| head=multiclass | val_accuracy | 0.5 | 0.75 |' in text
  assert '| head=regression | val_loss | 2 | 1.5 |' in text


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
  results = [json.loads((tmp_path / p.name / 'result.json').read_text()) for p in points]
  assert [r['seed'] for r in results] == [0, 1] and (tmp_path / 'report.md').exists()
  config.seeds = 1  # a single run, in the workdir itself
  assert isinstance(sweep.run_experiment(config, None, str(tmp_path / 'single'), data_dir), train.TrainResult)
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
