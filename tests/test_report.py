"""The sweep report: tables, Welch's test against its formulas, intervals, plots and the one-seed case."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.stats

from cnnjax import records, report


def _fake_result(name, pool, seed, accuracy):
  return records.RunResult(
      name, name.split(',seed=')[0], {'model.pool': pool, 'seed': seed}, seed,
      {'test_accuracy': accuracy, 'test_loss': 1 - accuracy, 'train_loss': 0.5}, num_params=100, flops=1000,
      steps_per_sec=10.0, wall_time_s=3.0,
      invariance={'shift': [0, 1], 'accuracy': [accuracy, accuracy - 0.1], 'agreement': [1.0, 0.8],
                  'consistent_correct': [accuracy, accuracy - 0.2]})


def _bare(point, seed=0, name=None, lr=None, invariance=None, **metrics):
  """A record with only what a test looks at."""
  return records.RunResult(name or point, point, {}, seed, metrics, 0, 0, lr=lr, invariance=invariance)


def _pick(grid, scores, picked, metric='val_accuracy', on_edge=False, picked_by=None):
  return records.LrPick(picked, metric, tuple(grid), tuple(scores), on_edge, picked_by=picked_by)

def test_report_from_fake_finished_runs(tmp_path):
  results = [_fake_result('pool=max,seed=0', 'max', 0, 0.8), _fake_result('pool=max,seed=1', 'max', 1, 0.9),
             _fake_result('pool=avg,seed=0', 'avg', 0, 0.7), _fake_result('pool=avg,seed=1', 'avg', 1, 0.7)]
  histories = {r.name: [{'step': 1, 'train_loss': 1.0}, {'step': 2, 'train_loss': 0.5, 'val_accuracy': 0.8}]
               for r in results}
  report.write(str(tmp_path), results, histories)
  text = (tmp_path / 'report.md').read_text()
  # point | seeds | pool | params | flops | train_loss | test_accuracy: mean ± sample std of (0.8, 0.9) | test_loss
  assert '| pool=max | 2 | max | 100 | 1,000 | 0.5 | 0.85 ± 0.071 | 0.15 ± 0.071 |' in text
  assert '| pool=avg | 2 | avg | 100 | 1,000 | 0.5 | 0.7 | 0.3 | 10 | 6 |' in text  # wall time: 3 s + 3 s
  assert '| pool=avg | 2 | 0.7000 ± 0.0000 | -0.1500 |' in text  # the comparison with the first point
  assert '| paired t (2 seeds) |' in text
  assert '| pool=max | 0.8500 | 0.7500 | 0.8000 | 0.6500 |' in text  # invariance at 1 px, mean over seeds
  for png in ('test_accuracy_vs_params.png', 'test_accuracy_vs_flops.png', 'test_accuracy_per_setting.png',
              'learning_curves.png', 'invariance.png'):
    assert (tmp_path / png).stat().st_size > 1000 and f'({png})' in text
  assert len((tmp_path / 'results.csv').read_text().splitlines()) == 5
  written = json.loads((tmp_path / 'results.json').read_text())
  assert len(written['summary']) == 2 and written['comparisons'] in text and written['learning_rates'] == ''
  from cnnjax import sweep  # --out of a sweep: its summary and comparisons, and the runs' total wall time
  sweep.write_out(str(tmp_path / 'out.json'), 'pooling', [None] * 4, str(tmp_path), 1.5)
  out = json.loads((tmp_path / 'out.json').read_text())
  assert (out['summary'], out['comparisons'], out['runs_wall_seconds']) == (written['summary'], written['comparisons'],
                                                                            12.0)
  assert out['invariance'] == written['invariance'] and '| pool=avg | 1 px | -0.1500 |' in out['invariance']

def test_a_report_that_fails_to_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
  """results.json, results.csv and report.md are written atomically: a full disk mid-write keeps the old files."""
  import errno
  import os

  from cnnjax import files
  results = [_fake_result('pool=max,seed=0', 'max', 0, 0.8), _fake_result('pool=avg,seed=0', 'avg', 0, 0.7)]
  report.write(str(tmp_path), results, {})
  before = {n: (tmp_path / n).read_bytes() for n in ('results.json', 'results.csv', 'report.md')}

  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(files.os, 'fsync', full_disk)
  with pytest.raises(OSError, match='No space left'):
    report.write(str(tmp_path), [dataclasses.replace(r, metrics={**r.metrics, 'test_accuracy': 0.1}) for r in results],
                 {})
  assert {n: (tmp_path / n).read_bytes() for n in before} == before
  assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


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
             for p, accs in (('max', (0.90, 0.91, 0.92)), ('avg', (0.80, 0.82, 0.81)), ('none', (0.89, 0.93, 0.91)),
                              ('same', (0.80, 0.81, 0.82)))
             for i, acc in enumerate(accs)]
  text = report.significance_table(results)
  assert '| pool=max | 3 | 0.9100 ± 0.0248 | (baseline) |' in text
  assert '| pool=avg | 3 | 0.8100 ± 0.0248 | -0.1000 |' in text and 'significantly lower |' in text
  assert '| pool=none | 3 | 0.9100 ± 0.0497 | +0.0000 |' in text and 'no significant difference |' in text
  assert '| pool=same | 3 | 0.8100 ± 0.0248 | -0.1000 | – | – | paired t (3 seeds) | – | – | no test (the same ' \
         'difference on every seed) |' in text
  assert '| pool=max | 3 | 0.9100 ± 0.0248 | -0.1000 |' not in report.significance_table(results, 'pool=avg')
  # The two sentences: avg's paired differences -0.10, -0.09, -0.11 give t = -0.1 / (0.01 / sqrt 3), p 0.0033 on 2
  # degrees of freedom, 0.0066 by Holm over the two tested points; none's (-0.01, 0.02, -0.01) a half-width of
  # t(0.975, 2) 4.303 x 0.01732 / sqrt 3 = 0.0430.
  said = report.conclusion(results)
  assert 'pool=avg: significantly lower (-0.1000, Holm p 0.0066); pool=none: no significant difference' in said
  assert 'over 3 seeds' in said and 'smaller than about 0.0430' in said and 'pool=same' not in said

def test_a_point_without_a_grid_beside_points_with_one_gets_a_dash_for_its_picked_rate():
  """A diagnostic point at a fixed rate (no lr_grid, so no picked_lr) in a sweep whose other points pick theirs:
  every row has the column, the fixed point's cell a dash."""
  picked = dataclasses.replace(_fake_result('pool=max,seed=0', 'max', 0, 0.8), lr=_pick([1e-3], [0.8], 1e-3))
  fixed = _fake_result('pool=avg,seed=0', 'avg', 0, 0.7)
  text = report.markdown_table(report.summarize([picked, fixed]))
  assert '| pool=max | 1 | max | 100 | 1,000 | 0.001 | 0.5 |' in text
  assert '| pool=avg | 1 | avg | 100 | 1,000 | – | 0.5 |' in text


def test_the_grid_table_names_each_points_own_selection_metric():
  """A sweep whose points pick by different metrics (classification: accuracy; regression: loss), as the
  heads sweep does: one row each, with its own metric."""
  results = [_bare('head=multiclass', lr=_pick([1e-3, 1e-2], [0.5, 0.75], 1e-2, on_edge=True)),
             _bare('head=regression', lr=_pick([1e-3, 1e-2], [2.0, 1.5], 1e-2, 'val_loss', on_edge=True))]
  text = report.grid_table(results)
  assert '| head=multiclass | val_accuracy | 0.001 … 0.01 (2) | 0.5 | 0.75 |' in text
  assert '| head=regression | val_loss | 0.001 … 0.01 (2) | 2 | 1.5 |' in text


def test_the_grid_table_shows_each_points_extended_grid_and_divergence():
  """Seeds of one point may extend their grids differently: a column per value tried by any run, the mean over
  the runs that tried it, and 'diverged' where all of them diverged."""
  results = [_bare('a', 0, 'a,seed=0', _pick([1e-3, 1e-2, 0.0316], [0.5, 0.7, 0.6], 1e-2)),
             _bare('a', 1, 'a,seed=1', _pick([1e-3, 1e-2], [0.6, 0.5], 1e-3)),
             _bare('b', lr=_pick([1e-3, 1e-2, 0.0316, 0.1], [0.1, 0.2, 0.3, None], 0.0316))]
  text = report.grid_table(results)
  assert '| point | picked by | grid tried | lr 0.001 | lr 0.01 | lr 0.0316 | lr 0.1 |' in text
  assert '| a | val_accuracy | 0.001 … 0.0316 (3) | 0.55 | 0.6 | 0.6 (1 of 2 runs) | – |' in text
  assert '| b | val_accuracy | 0.001 … 0.1 (4) | 0.1 | 0.2 | 0.3 | diverged |' in text
  assert 'Every pick lies inside its grid.' in text


def test_paired_interval_p_value_and_bootstrap_against_the_formulas():
  """The paired t interval and p-value by hand (t on the per-seed differences, n - 1 degrees of freedom); the
  bootstrap interval brackets the mean difference and lies within the differences' range."""
  import scipy.stats
  a, b = [0.91, 0.93, 0.92, 0.95, 0.90], [0.90, 0.90, 0.91, 0.92, 0.90]
  d = np.subtract(a, b)
  se = np.std(d, ddof=1) / np.sqrt(5)
  half = scipy.stats.t.ppf(0.975, 4) * se
  p = report.paired(a, b)
  np.testing.assert_allclose([p['diff'], p['low'], p['high']], [d.mean(), d.mean() - half, d.mean() + half])
  np.testing.assert_allclose(p['p'], 2 * scipy.stats.t.sf(d.mean() / se, 4), rtol=1e-9)
  assert d.min() <= p['boot_low'] < d.mean() < p['boot_high'] <= d.max()
  assert np.isnan(report.paired([0.9, 0.8], [0.8, 0.7])['p'])  # equal differences: no spread, no test


def test_holm_against_hand_computed_values():
  # sorted p: 0.01, 0.02, 0.04 (m = 3) -> 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04; nan is not counted
  assert report.holm([0.04, 0.01, float('nan'), 0.02]) == pytest.approx([0.04, 0.03, float('nan'), 0.04],
                                                                         nan_ok=True)
  assert report.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1


def test_holm_levels_are_alpha_over_the_p_values_left():
  assert report.holm_levels([0.04, 0.01, float('nan'), 0.02], 0.05) == pytest.approx(
      [0.05, 0.05 / 3, float('nan'), 0.025], nan_ok=True)


def test_paired_power_against_simulated_paired_t_tests():
  """The noncentral-t power of the paired test, and the smallest difference it detects with 80 % power, against
  the rejection rate of scipy's paired t-test on simulated differences (independent of the formula)."""
  sd, n, level = 0.004, 5, 0.05 / 3
  smallest = report.detectable(sd, n, level)
  rng = np.random.default_rng(0)
  d = rng.normal(smallest, sd, size=(40_000, n))
  rejected = np.mean(scipy.stats.ttest_1samp(d, 0.0, axis=1).pvalue < level)
  assert rejected == pytest.approx(0.8, abs=0.01)
  assert report.paired_power(smallest, sd, n, level) == pytest.approx(0.8, abs=1e-6)
  # a large sample: (z_{1 - level/2} + z_{0.8}) sd / sqrt(n), the normal approximation
  z = scipy.stats.norm.ppf(1 - 0.025) + scipy.stats.norm.ppf(0.8)
  assert report.detectable(sd, 2000, 0.05) == pytest.approx(z * sd / np.sqrt(2000), rel=2e-3)
  needed = report.seeds_needed(0.002, sd, 0.05)
  assert report.paired_power(0.002, sd, needed, 0.05) >= 0.8 > report.paired_power(0.002, sd, needed - 1, 0.05)


def test_each_paired_comparison_states_what_it_could_detect():
  offsets = (0.00, 0.03, -0.02, 0.05, 0.01)
  gains = {'max': (0,) * 5, 'avg': (0.004, 0.006, 0.005, 0.007, 0.003)}
  results = [_fake_result(f'pool={p},seed={i}', p, i, 0.9 + o + g)
             for p, gain in gains.items() for i, (o, g) in enumerate(zip(offsets, gain, strict=True))]
  avg = next(line for line in report.significance_table(results).splitlines() if line.startswith('| pool=avg |'))
  sd = float(np.std(gains['avg'], ddof=1))
  cells = [c.strip() for c in avg.split('|')]
  assert float(cells[11]) == pytest.approx(report.detectable(sd, 5, 0.05), abs=1e-4)
  assert int(cells[12].replace(',', '')) == report.seeds_needed(0.002, sd, 0.05)


def test_with_lr_pick_point_the_grid_table_shows_what_the_picking_seed_compared():
  """Seed 0 compares the rates; seeds 1 and 2 train at its pick. Each cell is seed 0's validation metric, not
  the mean of the three runs at the pick, so the picked rate's cell is the row's best."""
  results = [_bare('a', 0, lr=_pick([1e-3, 3e-3], [0.92, 0.91], 1e-3)),
             *(_bare('a', s, lr=_pick([1e-3], [v], 1e-3, picked_by='a,seed=0')) for s, v in ((1, 0.90), (2, 0.90)))]
  assert '| a | val_accuracy | 0.001 … 0.003 (2) | 0.92 | 0.91 |' in report.grid_table(results)


def test_points_sharing_seeds_are_paired_and_several_comparisons_are_holm_adjusted():
  """A per-seed offset shared by both points (the same data order) hides a small, steady gain from Welch's
  test; the paired test finds it. With three comparisons the verdicts use Holm's p-values."""
  offsets = (0.00, 0.03, -0.02, 0.05, 0.01)
  gains = {'max': (0,) * 5, 'avg': (0.004, 0.006, 0.005, 0.007, 0.003), 'none': (0.001, -0.002, 0.0, 0.002, -0.001)}
  results = [_fake_result(f'pool={p},seed={i}', p, i, 0.9 + o + g)
             for p, gain in gains.items() for i, (o, g) in enumerate(zip(offsets, gain, strict=True))]
  results += [_fake_result(f'pool=odd,seed={i}', 'odd', i, 0.9 + o) for i, o in zip((7, 8), offsets, strict=False)]
  text = report.significance_table(results)
  avg = next(line for line in text.splitlines() if line.startswith('| pool=avg |'))
  assert '| +0.0050 |' in avg and '| paired t (5 seeds) |' in avg and 'significantly higher |' in avg
  accuracy = [r.metrics['test_accuracy'] for r in results]
  assert report.welch(accuracy[5:10], accuracy[:5])['p'] > 0.5
  odd = next(line for line in text.splitlines() if line.startswith('| pool=odd |'))
  assert '| Welch t |' in odd  # seeds 7, 8: none shared with the baseline's 0..4
  raw, adjusted = (float(x) for x in avg.split('|')[8:10])
  assert adjusted == pytest.approx(3 * raw, rel=1e-2) and 'Holm-adjusted' in text  # the smallest of 3 p-values


def test_shift_tolerance_is_paired_per_shift_and_holm_adjusted_over_points_and_shifts():
  """consistent_correct at 1 and 2 px of two points against the baseline's, 3 seeds: scipy's paired t-test
  per (point, shift) and Holm's adjustment of the four p-values by hand."""
  import scipy.stats
  curves = {'max': [[0.90, 0.80, 0.60], [0.91, 0.82, 0.63], [0.89, 0.79, 0.58]],
            'avg': [[0.91, 0.83, 0.61], [0.92, 0.83, 0.66], [0.90, 0.81, 0.60]],
            'none': [[0.92, 0.70, 0.40], [0.93, 0.74, 0.47], [0.91, 0.69, 0.41]]}
  results = [_bare(f'pool={p}', seed, test_accuracy=c[0], invariance={
                'shift': [0, 1, 2], 'accuracy': c, 'agreement': [1.0, 0.9, 0.8], 'consistent_correct': c})
             for p, runs in curves.items() for seed, c in enumerate(runs)]
  text = report.invariance_table(results)
  base = np.asarray(curves['max'])
  p = {(name, k): scipy.stats.ttest_rel(np.asarray(curves[name])[:, k], base[:, k]).pvalue
       for name in ('avg', 'none') for k in (1, 2)}
  order = sorted(p, key=p.get)
  adjusted, running = {}, 0.0
  for j, key in enumerate(order):  # Holm: the j-th smallest times (4 - j), running maximum
    running = max(running, min(1.0, (4 - j) * p[key]))
    adjusted[key] = running
  for (name, k), q in adjusted.items():
    diff = np.mean(np.asarray(curves[name])[:, k] - base[:, k])
    assert f'| pool={name} | {k} px | {diff:+.4f} |' in text
    assert f'| paired t (3 seeds) | {p[name, k]:.3g} | {q:.3g} |' in text
  assert '| pool=none | 2 px | -0.1767 |' in text and 'significantly lower' in text
  mean, half = report.interval([0.70, 0.74, 0.69])
  assert f'| pool=none | 0.9200 ± 0.0248 | {mean:.4f} ± {half:.4f} |' in text  # the curve, 0 px then 1 px


def test_a_one_seed_report_has_no_nan_and_says_why_it_has_no_intervals(tmp_path):
  results = [_fake_result('pool=max', 'max', 0, 0.8), _fake_result('pool=avg', 'avg', 0, 0.7)]
  histories = {r.name: [{'step': 1, 'train_loss': 1.0}, {'step': 2, 'train_loss': 0.9}] for r in results}
  report.write(str(tmp_path), results, histories)
  text = (tmp_path / 'report.md').read_text()
  assert 'nan' not in text.lower() and 'One seed per point: no intervals and no significance tests' in text
  assert '| pool=avg | 0.7000 | -0.1000 |' in text


def test_a_point_with_one_seed_beside_points_with_three_gets_no_test_and_no_nan():
  results = [_fake_result(f'pool=max,seed={i}', 'max', i, a) for i, a in enumerate((0.90, 0.91, 0.92))]
  results.append(_fake_result('pool=avg,seed=0', 'avg', 0, 0.85))
  text = report.significance_table(results)
  assert 'nan' not in text
  assert ('| pool=avg | 1 | 0.8500 (1 seed) | -0.0600 | – | – | Welch t | – | – | no test (needs 2+ seeds each) |'
          in text)


def test_plots_are_wide_enough_for_their_titles(tmp_path):
  """A sweep of two points once gave a 400-pixel plot whose title was cut off."""
  from PIL import Image
  results = [_fake_result('pool=max', 'max', 0, 0.8), _fake_result('pool=avg', 'avg', 0, 0.7)]
  report.write(str(tmp_path), results, {r.name: [{'step': 1, 'train_loss': 1.0}] for r in results})
  for png in ('test_accuracy_per_setting.png', 'test_accuracy_vs_params.png'):
    assert Image.open(tmp_path / png).size[0] >= 650


@pytest.mark.parametrize('value,text', [(0.05, '0.05'), (1.7, '1.7'), (250, '250'), (12000, '12k'),
                                        (1_611_146, '1.61M')])
def test_log_axis_labels_are_plain_numbers(value, text):
  assert report._human(value) == text


def test_plateau_is_the_first_evaluation_whose_next_two_gain_less_than_the_threshold():
  rising = [0.80, 0.85, 0.88, 0.89, 0.895, 0.897]  # mean gains over the next two: .04 .02 .0075 .0035
  assert report.plateau(rising) is None
  assert report.plateau([*rising, 0.898]) == 4  # (0.898 - 0.895) / 2 = 0.0015 < 0.002
  assert report.plateau([0.5, 0.6, 0.59, 0.58]) == 1  # a decline counts
  assert report.plateau([0.5, 0.6, 0.59, 0.58], min_gain=-0.1) is None


def test_curve_table_averages_seeds_per_evaluation_and_marks_the_plateau():
  results = [_bare('a', s, f'a,seed={s}') for s in (0, 1)] + [_bare('b')]
  histories = {'a,seed=0': [{'step': 10, 'val_accuracy': 0.5}, {'step': 10, 'train_loss': 1.0},
                            {'step': 20, 'val_accuracy': 0.7}, {'step': 30, 'val_accuracy': 0.7},
                            {'step': 40, 'val_accuracy': 0.69}],
               'a,seed=1': [{'step': 10, 'val_accuracy': 0.7}, {'step': 20, 'val_accuracy': 0.7},
                            {'step': 30, 'val_accuracy': 0.71}, {'step': 40, 'val_accuracy': 0.71}],
               'b': [{'step': 10, 'val_accuracy': 0.1}, {'step': 20, 'val_accuracy': 0.2}]}
  table = report.curve_table(results, histories)
  assert '| 1 | 10 | 0.6000 | 0.1000 |' in table and '| 3 | 30 | 0.7050 | – |' in table
  # a: 0.6, 0.7, 0.705, 0.7 gains (0.705 - 0.6) / 2 over the next two from evaluation 1, (0.7 - 0.7) / 2 from 2
  assert '| plateau | | evaluation 2 | rising at the end (+10.00 point per evaluation over the last 1) |' in table


def test_curve_table_aligns_points_that_evaluate_at_other_steps_by_their_kth_evaluation():
  # a evaluates every 10 steps, b every 4 (a larger batch's epochs): the table pairs their k-th evaluations
  results = [_bare('a'), _bare('b')]
  histories = {'a': [{'step': 10, 'val_accuracy': 0.5}, {'step': 20, 'val_accuracy': 0.6}],
               'b': [{'step': 4 * k, 'val_accuracy': v} for k, v in enumerate((0.3, 0.4, 0.401, 0.401), 1)]}
  table = report.curve_table(results, histories)
  assert '| evaluation | a | b |' in table and "each row is every point's k-th evaluation" in table
  assert '| 1 | 0.5000 | 0.3000 |' in table and '| 2 | 0.6000 | 0.4000 |' in table and '| 4 | – | 0.4010 |' in table
  assert '| plateau | rising at the end (+10.00 point per evaluation over the last 1) | evaluation 2 |' in table


def test_what_a_new_reader_met_in_reports(tmp_path):
  """results.csv names seed once; a one-evaluation curve, a one-rate grid and a report without a "no significant
  difference" verdict say nothing they cannot; accuracy bars from 2 seeds stay within [0, 1] and say so."""
  results = [_fake_result(f'pool={p},seed={s}', p, s, a) for p, accs in (('max', (0.95, 0.99)), ('avg', (0.1, 0.2)))
             for s, a in enumerate(accs)]
  results = [dataclasses.replace(r, lr=_pick([0.01], [0.5], 0.01)) for r in results]
  report.write(str(tmp_path), results, {r.name: [{'step': 10, 'val_accuracy': 0.5}] for r in results})
  header = (tmp_path / 'results.csv').read_text().splitlines()[0].split(',')
  assert header.count('seed') == 1
  text = (tmp_path / 'report.md').read_text()
  assert 'one evaluation: cannot tell' in text and 'over the last 0' not in text
  assert 'One rate only, so nothing was compared, for: pool=avg, pool=max.' in text
  assert 'Every pick lies inside its grid' not in text
  assert 'significantly lower' in text and 'where it says "no significant difference"' not in text
  bars = report._error_bars(results, 'test_accuracy')
  assert bars['pool=max'].mean + bars['pool=max'].above == pytest.approx(1.0) and bars['pool=max'].clipped
  assert bars['pool=avg'].mean - bars['pool=avg'].below == pytest.approx(0.0)
  assert report._bars_note(bars) == 'bars: 95 % interval over seeds, clipped to [0, 1]; dots: the seeds'
  assert report._spread([100, 100, 50]) == [100, pytest.approx(106), 50]


def _by_budget(diffs_and_verdicts):
  return {f: {'diff': d, 'verdict': v} for f, (d, v) in diffs_and_verdicts.items()}


@pytest.mark.parametrize('cells,summary', [
    ({0.25: (0.01, 'significantly higher'), 1.0: (0.02, 'significantly higher')}, 'holds at every budget'),
    ({0.25: (-0.01, 'significantly lower'), 1.0: (0.02, 'significantly higher')}, 'changes sign'),
    ({0.25: (0.001, 'no significant difference'), 0.5: (0.01, 'significantly higher'),
      1.0: (0.02, 'significantly higher')}, 'significant only at 0.5, 1'),
    ({0.25: (0.001, 'no significant difference'), 1.0: (-0.001, 'no test')}, 'no significant difference at any budget'),
])
def test_each_comparison_is_summarised_across_budgets_in_a_phrase(cells, summary):
  assert report.budget_summary(_by_budget(cells)) == summary


def test_verdicts_by_budget_are_paired_and_holm_adjusted_over_points_and_budgets():
  offsets = (0.00, 0.03, -0.02, 0.05, 0.01)
  gains = {'max': {0.5: (0,) * 5, 1.0: (0,) * 5},
           'avg': {0.5: (-0.004, -0.006, -0.005, -0.007, -0.003), 1.0: (0.004, 0.006, 0.005, 0.007, 0.003)}}
  results = [_bare(p, i, name=f'{p},seed={i}', test_accuracy=0.9 + o + g[1.0][i],
                   **{f'budget={f:g}/test_accuracy': 0.9 + o + g[f][i] for f in g})
             for p, g in gains.items() for i, o in enumerate(offsets)]
  tests = report.budget_tests(results)
  assert list(tests) == ['avg'] and list(tests['avg']) == [0.5, 1.0]
  for f, t in tests['avg'].items():
    want = report.paired([r.metrics[f'budget={f:g}/test_accuracy'] for r in results[5:]],
                         [r.metrics[f'budget={f:g}/test_accuracy'] for r in results[:5]])
    assert t['diff'] == pytest.approx(want['diff']) and t['p'] == pytest.approx(want['p'])
  p_values = [t['p'] for t in tests['avg'].values()]
  assert [t['holm'] for t in tests['avg'].values()] == pytest.approx(report.holm(p_values))
  assert report.budget_summary(tests['avg']) == 'changes sign'
  assert '| avg | 0.5 | -0.0050 |' in report.budget_table(results)
