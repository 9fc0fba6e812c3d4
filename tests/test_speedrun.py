"""benchmarks/speedrun.py: its points, its summaries over seeds and the choice of the speedrun, against
hand-computed numbers (its timings are measurements, made by the script, not here)."""

import os
import sys

import pytest

from cnnjax.cli import load_experiment
from cnnjax.config import apply_overrides

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import racing  # noqa: E402
import speedrun  # noqa: E402

EXPERIMENT = 'fashion_mnist_speedrun'


def _changed(a: dict, b: dict) -> set[str]:
  return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_the_ladder_adds_one_practice_a_rung_and_ends_at_the_speedrun_config():
  config = load_experiment(EXPERIMENT).get_config()
  rungs = speedrun.points(EXPERIMENT, ladder=True, epochs=[], epoch=429)
  names = list(rungs)
  assert names == ['base', '-dropout', '+flip', '+ls0.2', '+triangular', '+tta', '+ema']
  for before, after in zip(names, names[1:], strict=False):
    assert len(_changed(rungs[before], rungs[after])) == 1, (before, after)
  assert apply_overrides(config, rungs['+ema']) == config
  base = apply_overrides(config, rungs['base'])  # fashion_mnist's recipe, at the speedrun's budget
  fashion_mnist = load_experiment('fashion_mnist').get_config()
  for field in ('model.dropout', 'data.augment_flip', 'label_smoothing', 'optimizer.schedule', 'eval_flip',
                'optimizer.ema_decay'):
    section, _, name = field.rpartition('.')
    assert (base.get(section) if section else base)[name] == (
        fashion_mnist.get(section) if section else fashion_mnist)[name], field


def test_the_frontier_trains_each_budget_and_evaluates_once_at_its_end():
  points = speedrun.points(EXPERIMENT, ladder=False, epochs=['2', '0.5'], epoch=429)
  assert points == {'2 epochs': dict.fromkeys(('num_train_steps', 'eval_every_steps', 'checkpoint_every_steps',
                                                'log_every_steps'), 858),
                    '0.5 epochs': dict.fromkeys(('num_train_steps', 'eval_every_steps', 'checkpoint_every_steps',
                                                  'log_every_steps'), 214)}
  assert speedrun.points(EXPERIMENT, ladder=False, epochs=[], epoch=429) == {'speedrun': {}}


def test_a_summary_gives_means_with_t_intervals_and_median_seconds():
  """Test accuracies 0.90, 0.92, 0.94: mean 0.92, sd 0.02, half-width t(0.975, 2) * 0.02 / sqrt(3) = 0.04968."""
  runs = [{'seconds': s, 'test_accuracy': a, 'val_accuracy': v}
          for s, a, v in ((50.0, 0.90, 0.91), (70.0, 0.92, 0.93), (55.0, 0.94, 0.95))]
  out = racing.summary_over_seeds(runs)
  assert out['seeds'] == 3 and out['seconds'] == {'median': 55.0, 'per_seed': [50.0, 70.0, 55.0]}
  assert out['test_accuracy']['mean'] == pytest.approx(0.92)
  assert out['test_accuracy']['interval'] == pytest.approx(4.302653 * 0.02 / 3 ** 0.5, rel=1e-5)
  assert out['val_accuracy']['per_seed'] == [0.91, 0.93, 0.95]


def test_each_rung_is_compared_with_the_one_before_it_seed_by_seed():
  """Rung b is rung a + 0.01, 0.02, 0.03 on the three seeds: mean +0.02; its seconds' median is 1.1 times a's."""
  a = racing.summary_over_seeds([{'seconds': 10.0, 'test_accuracy': x, 'val_accuracy': x} for x in (0.90, 0.85, 0.88)])
  b = racing.summary_over_seeds([{'seconds': 11.0, 'test_accuracy': x, 'val_accuracy': x} for x in (0.91, 0.87, 0.91)])
  diffs = speedrun.against_previous({'a': a, 'b': b})
  assert list(diffs) == ['b']
  assert diffs['b']['test_accuracy']['diff'] == pytest.approx(0.02)
  assert diffs['b']['test_accuracy']['low'] < 0.02 < diffs['b']['test_accuracy']['high']
  assert diffs['b']['seconds_ratio'] == pytest.approx(1.1)


def test_the_speedrun_is_the_best_rung_on_validation_or_the_config_budget_on_the_frontier():
  def point(val):
    return {'val_accuracy': {'mean': val}}
  summaries = {'base': point(0.90), '+x': point(0.93), '+y': point(0.92)}
  assert speedrun.speedrun_point(summaries, dict.fromkeys(summaries, {}), 1716, ladder=True) == '+x'
  named = {'2 epochs': {'num_train_steps': 858}, '4 epochs': {'num_train_steps': 1716}}
  assert speedrun.speedrun_point({}, named, 1716, ladder=False) == '4 epochs'
  assert speedrun.speedrun_point({}, {'2 epochs': {'num_train_steps': 858}}, 1716, ladder=False) is None
