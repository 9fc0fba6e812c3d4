"""The sweep report: report.md, results.csv, results.json and PNG plots in the sweep's workdir.

Rows are sweep points (seeds of one point are merged into mean ± std); columns are the varied settings,
parameters, FLOPs, final train/test metrics, steps/s and wall time.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.stats  # noqa: E402
from matplotlib import ticker  # noqa: E402

from cnnjax import files, records  # noqa: E402

Result = records.RunResult  # one run's record (result.json)
FIRST_LAYER_FILE = 'first_layer.npz'  # in a run's directory: first-layer filters, feature maps and the input
SKIP_METRICS = ('train_grad_norm', 'train_learning_rate')


def _group(results: Sequence[Result]) -> dict[str, list[Result]]:
  """Results by point (the seeds of one setting together), in order of first appearance."""
  groups: dict[str, list[Result]] = {}
  for r in results:
    groups.setdefault(r.point, []).append(r)
  return groups


def _metric_keys(results: Sequence[Result]) -> list[str]:
  keys = {k for r in results for k in r.metrics if k not in SKIP_METRICS and '/' not in k}  # not other budgets'
  return sorted(keys, key=lambda k: (not k.startswith('train_'), k))


def main_metric(results: Sequence[Result]) -> str:
  """Test accuracy where every point has it, else test loss."""
  return 'test_accuracy' if all('test_accuracy' in r.metrics for r in results) else 'test_loss'


def _stats(values: list[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


CONFIDENCE = 0.95


def interval(values: Sequence[float]) -> tuple[float, float]:
  """(mean, half-width of its 95 % Student-t interval over the seeds); the half-width is nan for one seed."""
  n = len(values)
  if n < 2:
    return float(np.mean(values)), float('nan')
  sem = float(np.std(values, ddof=1)) / np.sqrt(n)
  return float(np.mean(values)), float(scipy.stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * sem)


def welch(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
  """Difference of means (values - baseline), its 95 % interval and the two-sided p-value of Welch's t-test
  (unequal variances); nan where either side has fewer than two seeds or neither varies."""
  diff = float(np.mean(values) - np.mean(baseline))
  if min(len(values), len(baseline)) < 2 or not (np.std(values) or np.std(baseline)):
    return {'diff': diff, 'low': float('nan'), 'high': float('nan'), 'p': float('nan')}
  with warnings.catch_warnings():  # nearly equal values: scipy warns of precision loss; the p-value stands
    warnings.simplefilter('ignore', RuntimeWarning)
    test = scipy.stats.ttest_ind(values, baseline, equal_var=False)
  ci = test.confidence_interval(CONFIDENCE)
  return {'diff': diff, 'low': float(ci.low), 'high': float(ci.high), 'p': float(test.pvalue)}


BOOTSTRAP_RESAMPLES = 9999


def paired(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
  """The mean paired difference (values[i] - baseline[i], the same seed at both points), its 95 % Student-t
  interval and the two-sided p-value of the paired t-test (scipy.stats.ttest_rel), and a 95 % percentile
  bootstrap interval of the mean difference (scipy.stats.bootstrap, fixed resampling seed); the intervals and
  p-value are nan for fewer than two pairs or differences that do not vary."""
  d = np.asarray(values, float) - np.asarray(baseline, float)
  nan = float('nan')
  result = {'diff': float(d.mean()), 'low': nan, 'high': nan, 'p': nan, 'boot_low': nan, 'boot_high': nan}
  if len(d) < 2 or np.ptp(d) <= 1e-9:  # equal differences (up to float rounding): nothing to test
    return result
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    test = scipy.stats.ttest_rel(values, baseline)
    boot = scipy.stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                                 method='percentile', rng=np.random.default_rng(0)).confidence_interval
  ci = test.confidence_interval(CONFIDENCE)
  return {**result, 'low': float(ci.low), 'high': float(ci.high), 'p': float(test.pvalue),
          'boot_low': float(boot.low), 'boot_high': float(boot.high)}


POWER = 0.8
DETECT = 0.002  # 0.2 percentage point of accuracy: each comparison says how many seeds would detect it


def paired_power(diff: float, sd: float, n: int, level: float) -> float:
  """The power of the two-sided paired t-test at ``level`` over ``n`` pairs, whose differences spread with
  standard deviation ``sd``, to detect a true mean difference ``diff``: P(|T| > t_crit) for T noncentral t
  (n - 1 degrees of freedom, noncentrality diff sqrt(n) / sd)."""
  df, nc = n - 1, abs(diff) * np.sqrt(n) / sd
  crit = scipy.stats.t.ppf(1 - level / 2, df)
  wrong_side = float(np.nan_to_num(scipy.stats.nct.cdf(-crit, df, nc)))  # vanishing; scipy's nan far out is 0
  return float(scipy.stats.nct.sf(crit, df, nc)) + wrong_side


def detectable(sd: float, n: int, level: float, power: float = POWER) -> float:
  """The smallest true difference that the paired t-test (``paired_power``) detects with probability ``power``;
  nan for fewer than two pairs or no spread."""
  if n < 2 or not sd > 0:
    return float('nan')
  high = sd
  while paired_power(high, sd, n, level) < power:
    high *= 2
  return float(scipy.optimize.brentq(lambda d: paired_power(d, sd, n, level) - power, 0.0, high, xtol=sd * 1e-6))


def seeds_needed(diff: float, sd: float, level: float, power: float = POWER, most: int = 100_000) -> int | None:
  """The fewest pairs (seeds) with which the paired t-test detects ``diff`` with probability ``power``, given
  the spread ``sd`` of the differences; None beyond ``most``, or without a spread."""
  if not sd > 0:
    return None
  high = 2
  while paired_power(diff, sd, high, level) < power:
    if high > most:
      return None
    high *= 2
  low = max(2, high // 2)
  while low < high:  # power grows with n: the first n that reaches it
    mid = (low + high) // 2
    low, high = (mid + 1, high) if paired_power(diff, sd, mid, level) < power else (low, mid)
  return high


def holm_levels(p_values: Sequence[float], alpha: float) -> list[float]:
  """The level at which Holm's procedure tests each p-value: alpha / (m - k) for the k-th smallest (from 0) of
  the m that are not nan; nan for nan."""
  p = np.asarray(p_values, float)
  tested = np.flatnonzero(~np.isnan(p))
  levels = np.full(len(p), np.nan)
  for k, i in enumerate(tested[np.argsort(p[tested], kind='stable')]):
    levels[i] = alpha / (len(tested) - k)
  return levels.tolist()


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjustment of p-values for testing them together (family-wise error at the level):
  the k-th smallest of m becomes max over j <= k of (m - j + 1) p_(j), capped at 1; nan stays nan and does not
  count towards m."""
  p = np.asarray(p_values, float)
  tested = np.flatnonzero(~np.isnan(p))
  order = tested[np.argsort(p[tested], kind='stable')]
  m, adjusted, running = len(order), p.copy(), 0.0
  for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * p[i]))
    adjusted[i] = running
  return [float(x) for x in adjusted]


def _mean_cell(values: Sequence[float]) -> str:
  """'mean ± half-width' over seeds; the mean alone, said to be one seed, for one seed (never nan)."""
  mean, half = interval(values)
  return f'{mean:.4f} (1 seed)' if len(values) < 2 else f'{mean:.4f} ± {half:.4f}'


def by_seed(runs: Sequence[Result], metric: str) -> dict[int, float]:
  """seed -> the runs' final ``metric``."""
  return {r.seed: r.metrics[metric] for r in runs}


def compare(ours: dict[int, float], theirs: dict[int, float]) -> dict[str, Any]:
  """A point's values (seed -> value) against the baseline point's: paired seed by seed (``paired``) on the seeds
  they share when they share two or more (a seed gives both points the same data order, and the same initial
  weights where their shapes match), else Welch's test (``welch``) on all of them. The result names the test in
  'test'."""
  shared = [s for s in ours if s in theirs]
  if len(shared) >= 2:
    d = [ours[s] - theirs[s] for s in shared]
    return {'test': f'paired t ({len(shared)} seeds)', 'n': len(shared), 'sd': float(np.std(d, ddof=1)),
            **paired([ours[s] for s in shared], [theirs[s] for s in shared])}
  return {'test': 'Welch t', 'n': 0, 'sd': float('nan'), 'boot_low': float('nan'), 'boot_high': float('nan'),
          **welch(list(ours.values()), list(theirs.values()))}


def _interval_cell(low: float, high: float) -> str:
  return '–' if np.isnan(low) else f'[{low:+.4f}, {high:+.4f}]'


def _tests(groups: dict[str, list[Result]], base: str, metric: str) -> tuple[dict[str, dict[str, Any]], bool]:
  """Each point's ``compare`` with the baseline plus 'decided_by' (its Holm-adjusted p-value when more than one
  point is tested, else its p-value), 'verdict', and for a paired test its power: 'detectable' (the smallest
  difference it detects with 80 % power at the level Holm tests it at, from the observed spread of the paired
  differences) and 'seeds_for_detect' (the seeds that would detect DETECT in accuracy); and whether more than one
  was tested."""
  tests = {name: compare(by_seed(g, metric), by_seed(groups[base], metric)) for name, g in groups.items()
           if name != base}
  p_values = [t['p'] for t in tests.values()]
  adjusted = dict(zip(tests, holm(p_values), strict=True))
  levels = dict(zip(tests, holm_levels(p_values, 1 - CONFIDENCE), strict=True))
  family = sum(not np.isnan(t['p']) for t in tests.values()) > 1
  for name, t in tests.items():
    t['decided_by'] = adjusted[name] if family else t['p']
    t['verdict'] = _verdict(t['decided_by'], t['diff'])
    level = levels[name] if family else 1 - CONFIDENCE
    t['detectable'] = detectable(t['sd'], t['n'], level) if t['n'] and not np.isnan(level) else float('nan')
    t['seeds_for_detect'] = (seeds_needed(DETECT, t['sd'], level) if metric.endswith('accuracy') and t['n']
                             and not np.isnan(level) else None)
  return tests, family


def _verdict(p: float, diff: float) -> str:
  return ('no test' if np.isnan(p) else 'no significant difference' if p >= 1 - CONFIDENCE else
          'significantly ' + ('higher' if diff > 0 else 'lower'))


def conclusion(results: Sequence[Result], baseline: str = '') -> str:
  """Two sentences: what the comparisons with the baseline show (each verdict with its difference and p-value)
  and what they do not (differences within the widest interval's half-width, other settings); '' without a
  comparison over 2+ seeds."""
  metric, groups = main_metric(results), _group(results)
  base = baseline or next(iter(groups))
  if base not in groups or min(len(g) for g in groups.values()) < 2 or len(groups) < 2:
    return ''
  tests, family = _tests(groups, base, metric)
  said = [f'{name}: {t["verdict"]} ({t["diff"]:+.4f}, {"Holm " * family}p {t["decided_by"]:.2g})'
          for name, t in tests.items() if t['verdict'] != 'no test']
  halves = [(t['high'] - t['low']) / 2 for t in tests.values() if not np.isnan(t['low'])]
  if not said:
    return ''
  seeds = sorted({len(g) for g in groups.values()})
  undetected = (f'a difference smaller than about {max(halves):.4f} (the widest 95 % interval\'s half-width) where '
                'it says "no significant difference", nor ' if any(t['verdict'] == 'no significant difference'
                                                                  for t in tests.values()) else '')
  return (f'Conclusion. Shows: against {base}, on this data, budget and learning-rate rule, over '
          f'{"-".join(map(str, sorted({seeds[0], seeds[-1]})))} seeds, '
          + '; '.join(said) + f' in {metric}. Does not show: {undetected}whether these differences hold on other '
          'datasets, budgets, widths or optimisers.')


def significance_table(results: Sequence[Result], baseline: str = '') -> str:
  """Each point's main metric (mean, 95 % interval over seeds) and its difference from the baseline point's
  (``baseline``, default the first): paired by seed where the points share seeds, with t and bootstrap 95 %
  intervals and the paired t-test's p-value, else Welch's; with more than one comparison, Holm-adjusted p-values
  decide the verdicts. Points with one seed get their mean and difference only, and the text says why."""
  metric, groups = main_metric(results), _group(results)
  base = baseline or next(iter(groups))
  if base not in groups:
    return f'The baseline point {base} has not finished; no comparison.'
  ref = [r.metrics[metric] for r in groups[base]]
  if max(len(g) for g in groups.values()) < 2:
    lines = [f'| point | {metric} | difference from {base} |', '|' + ' --- |' * 3]
    lines += [f'| {name} | {g[0].metrics[metric]:.4f} | '
              + ('(baseline)' if name == base else f'{g[0].metrics[metric] - ref[0]:+.4f}') + ' |'
              for name, g in groups.items()]
    return ('One seed per point: no intervals and no significance tests, so these differences may be noise '
            '(--config.seeds=5 repeats each point).\n\n' + '\n'.join(lines))
  tests, family = _tests(groups, base, metric)
  lines = [f'| point | seeds | {metric} (mean ± 95 % interval) | difference from {base} | 95 % interval (t) | '
           '95 % interval (bootstrap) | test | p | Holm p | at 5 % | detectable (80 % power) | '
           f'seeds to detect {DETECT:g} |', '|' + ' --- |' * 12]
  for name, group in groups.items():
    row = f'| {name} | {len(group)} | {_mean_cell([r.metrics[metric] for r in group])} |'
    if name == base:
      lines.append(row + ' (baseline) | | | | | | | | |')
      continue
    t = tests[name]
    if np.isnan(t['p']):
      why = ('needs 2+ seeds each' if min(len(group), len(ref)) < 2 else
             'the same difference on every seed' if t['test'].startswith('paired') else 'no spread over seeds')
      lines.append(f'{row} {t["diff"]:+.4f} | – | – | {t["test"]} | – | – | no test ({why}) | – | – |')
      continue
    lines.append(f'{row} {t["diff"]:+.4f} | {_interval_cell(t["low"], t["high"])} | '
                 f'{_interval_cell(t["boot_low"], t["boot_high"])} | {t["test"]} | {t["p"]:.3g} | '
                 f'{t["decided_by"]:.3g} | {t["verdict"]} | {_power_cells(t)} |')
  return ('Each point against the baseline. Points that share seeds (the same data order, and the same initial '
          'weights where shapes match) are compared seed by seed: the mean paired difference with its 95 % '
          'interval from the t distribution and from a percentile bootstrap, and the paired t-test '
          '(scipy.stats.ttest_rel); points that share no seeds get Welch\'s t-test (unequal variances). '
          + ('With several comparisons the verdicts use Holm-adjusted p-values (family-wise error 5 %).'
             if family else 'One comparison: no adjustment.')
          + ' Power (paired tests): the smallest true difference the test detects with 80 % probability at the '
          'level Holm tests it at, taking the spread of its paired differences as the truth, and the seeds that '
          f'would detect {DETECT:g} ({DETECT * 100:g} percentage point of accuracy) so.\n\n' + '\n'.join(lines))


def _power_cells(t: dict[str, Any]) -> str:
  """'detectable | seeds to detect DETECT' cells of a comparison ('–' where it has none)."""
  detect = '–' if np.isnan(t['detectable']) else f'{t["detectable"]:.4f}'
  seeds = t['seeds_for_detect']
  return f'{detect} | {"–" if seeds is None else f"{seeds:,}"}'



def budget_fractions(results: Sequence[Result], metric: str) -> list[float]:
  """The budgets (fractions of num_train_steps) at which every run has ``metric`` ('budget=<f>/<metric>')."""
  found = [{float(k.split('/')[0].removeprefix('budget=')) for k in r.metrics
            if k.startswith('budget=') and k.endswith(f'/{metric}')} for r in results]
  return sorted(set.intersection(*found)) if found else []


def budget_tests(results: Sequence[Result], baseline: str = '') -> dict[str, dict[float, dict[str, Any]]]:
  """Each point's ``compare`` with the baseline at each budget, with 'holm' (Holm-adjusted over every point and
  budget: the family is comparisons x budgets) and 'verdict'; {} with fewer than two budgets or points."""
  metric, groups = main_metric(results), _group(results)
  base = baseline or next(iter(groups))
  fractions = budget_fractions(results, metric)
  if len(fractions) < 2 or len(groups) < 2 or base not in groups:
    return {}
  tests = {name: {f: compare(by_seed(runs, f'budget={f:g}/{metric}'), by_seed(groups[base], f'budget={f:g}/{metric}'))
                  for f in fractions} for name, runs in groups.items() if name != base}
  flat = [t for by_budget in tests.values() for t in by_budget.values()]
  for t, p in zip(flat, holm([t['p'] for t in flat]), strict=True):
    t['holm'], t['verdict'] = p, _verdict(p, t['diff'])
  return tests


def budget_summary(by_budget: dict[float, dict[str, Any]]) -> str:
  """One phrase for a comparison across budgets: 'holds at every budget', 'changes sign' (significant both
  ways), 'significant only at 0.5, 1', or 'no significant difference at any budget'."""
  significant = {f: t['diff'] for f, t in by_budget.items() if t['verdict'].startswith('significantly')}
  if not significant:
    return 'no significant difference at any budget'
  if {d > 0 for d in significant.values()} == {True, False}:
    return 'changes sign'
  if len(significant) == len(by_budget):
    return 'holds at every budget'
  return 'significant only at ' + ', '.join(f'{f:g}' for f in significant)


def budget_table(results: Sequence[Result], baseline: str = '') -> str:
  """Each comparison with the baseline at each budget (paired where seeds are shared; Holm over comparisons x
  budgets) and its summary across budgets; '' without several budgets."""
  tests, metric, groups = budget_tests(results, baseline), main_metric(results), _group(results)
  if not tests:
    return ''
  base = baseline or next(iter(groups))
  lines = [f'| point | budget | difference from {base} | 95 % interval (t) | test | p | Holm p | at 5 % | across '
           'budgets |', '|' + ' --- |' * 9]
  for name, by_budget in tests.items():
    summary = budget_summary(by_budget)
    for i, (f, t) in enumerate(by_budget.items()):
      tested = f'{t["p"]:.3g} | {t["holm"]:.3g}' if not np.isnan(t['p']) else '– | –'
      lines.append(f'| {name} | {f:g} | {t["diff"]:+.4f} | {_interval_cell(t["low"], t["high"])} | {t["test"]} | '
                   f'{tested} | {t["verdict"]} | {summary if i == 0 else ""} |')
  return (f'Verdicts by budget ({metric}; a budget is a fraction of num_train_steps, each shorter one a wsd cooldown '
          'branched from the run): each point against the baseline at each budget, paired by seed, Holm-adjusted '
          'over every point and budget.\n\n' + '\n'.join(lines))


def _budget_header(fractions: Sequence[float]) -> list[str]:
  """The header rows of a table with a column per budget."""
  return ['| point | ' + ' | '.join(f'budget {f:g}' for f in fractions) + ' |', '|' + ' --- |' * (len(fractions) + 1)]


def budget_means_table(results: Sequence[Result]) -> str:
  """Each point's main metric at each budget (mean ± 95 % interval over its seeds), as markdown; '' without
  several budgets."""
  metric, groups = main_metric(results), _group(results)
  fractions = budget_fractions(results, metric)
  if len(fractions) < 2:
    return ''
  lines = _budget_header(fractions)
  lines += [f'| {name} | ' + ' | '.join(_mean_cell([r.metrics[f'budget={f:g}/{metric}'] for r in runs])
                                        for f in fractions) + ' |' for name, runs in groups.items()]
  return f'{metric} at each budget (mean ± 95 % interval over seeds):\n\n' + '\n'.join(lines)


def budget_picks_table(results: Sequence[Result]) -> str:
  """The learning rate each point picked at each budget (--config.lr_pick=halving), as markdown; '' without."""
  picks = {name: {float(k.split('/')[0].removeprefix('budget=')): v for k, v in group[0].metrics.items()
                  if k.startswith('budget=') and k.endswith('/learning_rate')}
           for name, group in _group(results).items()}
  fractions = sorted({f for by_budget in picks.values() for f in by_budget})
  if not fractions:
    return ''
  lines = _budget_header(fractions)
  lines += [f'| {name} | ' + ' | '.join(f'{by_budget[f]:g}' if f in by_budget else '–' for f in fractions) + ' |'
            for name, by_budget in picks.items()]
  return ('Learning rate picked at each budget on the mean validation metric over the point\'s seeds (successive '
          'halving: the better half of the rates went on to each next budget); each budget\'s metrics are of its '
          'pick.\n\n' + '\n'.join(lines))


def invariance_table(results: Sequence[Result], baseline: str = '') -> str:
  """Shift tolerance: at the largest measured shift, per point (mean over seeds), accuracy, agreement with the
  unshifted predictions and correct both unshifted and shifted; then the images correct both unshifted and
  shifted by each 1..K pixels (mean ± 95 % interval over seeds) and each point's difference from the baseline
  point's (``baseline``, default the first) at the same shift, paired by seed (``compare``), with Holm-adjusted
  p-values over every point and shift; '' when no run measured invariance."""
  groups = {n: [r for r in g if r.invariance] for n, g in _group(results).items()}
  groups = {n: runs for n, runs in groups.items() if runs}
  if not groups:
    return ''
  base = baseline if baseline in groups else next(iter(groups))
  shifts = groups[base][0].invariance['shift']
  keys = ('accuracy', 'agreement', 'consistent_correct')
  header = ' | '.join(f'{k} at {shifts[-1]} px' for k in keys)
  lines = [f'| point | accuracy at 0 px | {header} |', '|' + ' --- |' * 5]
  for name, runs in groups.items():
    cells = [np.mean([r.invariance['accuracy'][0] for r in runs])]
    cells += [np.mean([r.invariance.get(k, [np.nan])[-1] for r in runs]) for k in keys]
    lines.append(f'| {name} | ' + ' | '.join(f'{c:.4f}' for c in cells) + ' |')
  return ('Shift invariance (diagonal shifts, wrapping; agreement alone would score a constant predictor 1, '
          'consistent_correct cannot exceed the accuracy):\n\n' + '\n'.join(lines) + '\n\n'
          + _shift_tolerance_tests(groups, base, shifts))


def _shift_tolerance_tests(groups: dict[str, list[Result]], base: str, shifts: list[int]) -> str:
  """The consistent_correct curve per point and its paired tests against ``base`` at each shift (Holm over
  all points and shifts)."""
  def at(runs: list[Result], k: int) -> dict[int, float]:
    return {r.seed: r.invariance['consistent_correct'][k] for r in runs}
  curve = ['| point | ' + ' | '.join(f'{s} px' for s in shifts) + ' |', '|' + ' --- |' * (len(shifts) + 1)]
  curve += [f'| {name} | ' + ' | '.join(_mean_cell(list(at(runs, k).values())) for k in range(len(shifts)))
            + ' |' for name, runs in groups.items()]
  tests = {(name, k): compare(at(runs, k), at(groups[base], k))
           for name, runs in groups.items() if name != base for k in range(1, len(shifts))}
  adjusted = holm([t['p'] for t in tests.values()])
  rows = ['| point | shift | difference from ' + base + ' | 95 % interval (t) | test | p | Holm p | at 5 % |',
          '|' + ' --- |' * 8]
  for ((name, k), t), p in zip(tests.items(), adjusted, strict=True):
    tested = f'{t["p"]:.3g} | {p:.3g}' if not np.isnan(p) else '– | –'
    rows.append(f'| {name} | {shifts[k]} px | {t["diff"]:+.4f} | {_interval_cell(t["low"], t["high"])} | '
                f'{t["test"]} | {tested} | {_verdict(p, t["diff"])} |')
  return ('Correct both unshifted and shifted, per shift (mean ± 95 % interval over seeds; 0 px is the '
          'accuracy):\n\n' + '\n'.join(curve) + '\n\nEach point against ' + base + ' at each shift, paired by '
          'seed, Holm-adjusted over every point and shift:\n\n' + '\n'.join(rows))


def summarize(results: Sequence[Result]) -> list[dict[str, Any]]:
  """One row per point (seeds merged): settings, params, flops, metric and speed (mean, std) pairs, and the
  wall time the point cost: the sum over its seeds, every learning rate they tried included (with lr_pick=point
  the first seed's run holds the whole grid, so a mean over seeds would mix a grid with single runs)."""
  varied = sorted({k for r in results for k in r.overrides if k not in ('name', 'seed')})
  grids = any(r.lr for r in results)  # then every row has the column ('–' for a point without a grid)
  rows = []
  for name, group in _group(results).items():
    row = {'point': name, 'seeds': len(group), **{k: group[0].overrides.get(k, '') for k in varied},
           'params': group[0].num_params, 'flops': group[0].flops}
    if grids:
      row['picked lr'] = (', '.join(f'{r.lr.picked:g}' + ' (edge)' * r.lr.on_edge for r in group)
                          if all(r.lr for r in group) else None)
    for key in _metric_keys(results):
      values = [r.metrics[key] for r in group if key in r.metrics]
      row[key] = _stats(values) if values else None
    row['steps_per_sec'] = _stats([r.steps_per_sec for r in group])
    row['wall_time_s'] = round(sum(r.wall_time_s for r in group))
    rows.append(row)
  return rows


def grid_table(results: Sequence[Result]) -> str:
  """Per point, the validation metric it picked by (its head's: accuracy, or loss for regression) at each
  learning rate tried, as the pick saw it: the mean over the runs that compared rates (every seed, or with
  --config.lr_pick=point the first seed alone, not the other seeds' runs at the pick); a grid is extended past
  its edge while the pick lies there; and its final grid, as markdown; '' when no point chose a learning rate."""
  chosen = [r for r in results if r.lr]
  if not chosen:
    return ''
  rates = sorted({lr for r in chosen for lr in r.lr.grid})
  lines = ['| point | picked by | grid tried | ' + ' | '.join(f'lr {lr:g}' for lr in rates) + ' |',
           '|' + ' --- |' * (len(rates) + 3)]
  for name, group in _group(chosen).items():
    tried = sorted({lr for r in group for lr in r.lr.grid})
    pickers = [r for r in group if len(r.lr.grid) > 1] or group  # lr_pick=point: the seed that compared rates
    cells = [_grid_cell([r.lr.by_rate() for r in pickers], lr) for lr in rates]
    lines.append(f'| {name} | {group[0].lr.metric} | {tried[0]:g} … {tried[-1]:g} ({len(tried)}) | '
                 + ' | '.join(cells) + ' |')
  edges = sorted({r.point for r in chosen if r.lr.on_edge})
  single = sorted({name for name, group in _group(chosen).items() if all(len(r.lr.grid) < 2 for r in group)})
  note = (f'\n\nThe pick still lies on the edge of its grid, after the extensions allowed '
          f'(--config.lr_grid_extensions), for: {", ".join(edges)}; the best learning rate may lie outside it.'
          if edges else '' if single else '\n\nEvery pick lies inside its grid.')
  if single:
    note += (f'\n\nOne rate only, so nothing was compared, for: {", ".join(single)}.'
             + ('' if edges or len(single) == len(_group(chosen)) else ' Every other pick lies inside its grid.'))
  who = ("by each point's first seed on its validation metric (--config.lr_pick=point: the other seeds train at "
         'that pick)' if any(r.lr.picked_by for r in chosen) else 'per run by its validation metric')
  if any(r.lr.picked_by == 'halving' for r in chosen):
    who = ('on the mean validation metric over each point\'s seeds, by successive halving over the budgets '
           '(--config.lr_pick=halving; the cells: each rate at the shortest budget, where every rate trained; the '
           'rate picked at each budget: below)')
  return (f'Learning rate picked {who}; the test metrics above are of the picks only.\n\n' + '\n'.join(lines)
          + note)


PLATEAU_GAIN = 0.002  # the plateau rule: the mean gain per evaluation over the next PLATEAU_SPAN ones falls below it
PLATEAU_SPAN = 2


def plateau(values: Sequence[float], min_gain: float = PLATEAU_GAIN, span: int = PLATEAU_SPAN) -> int | None:
  """The index of the first of ``values`` (a metric at successive evaluations, higher is better) from which the
  mean gain per evaluation over the next ``span`` falls below ``min_gain``; None when it never does within them."""
  for i in range(len(values) - span):
    if (values[i + span] - values[i]) / span < min_gain:
      return i
  return None


def curve_table(results: Sequence[Result], histories: dict[str, list[dict[str, float]]]) -> str:
  """Per point, validation accuracy at each periodic evaluation (mean over the seeds), and where it plateaus
  (``plateau``): whether the budget let training converge. '' without periodic validation accuracy."""
  curves = {}
  for name, group in _group(results).items():
    runs = [{r['step']: r['val_accuracy'] for r in histories.get(g.name, []) if 'val_accuracy' in r} for g in group]
    steps = sorted(set.intersection(*(set(run) for run in runs)))
    if steps:
      curves[name] = {step: float(np.mean([run[step] for run in runs])) for step in steps}
  if not curves:
    return ''
  steps = max((list(curve) for curve in curves.values()), key=len)
  by_step = all(list(curve) == steps[:len(curve)] for curve in curves.values())
  rows = steps if by_step else range(len(steps))  # points evaluating at other steps: their k-th evaluations
  columns = list(curves.values()) if by_step else [dict(enumerate(c.values())) for c in curves.values()]
  lines = ['| evaluation | ' + 'step | ' * by_step + ' | '.join(curves) + ' |',
           '|' + ' --- |' * (len(curves) + 1 + by_step)]
  lines += [f'| {i + 1} | ' + f'{row:,} | ' * by_step
            + ' | '.join(f'{c[row]:.4f}' if row in c else '–' for c in columns) + ' |' for i, row in enumerate(rows)]
  cells = []
  for curve in curves.values():
    values = list(curve.values())
    at, span = plateau(values), min(PLATEAU_SPAN, len(values) - 1)
    cells.append(_plateau_cell(values, at, span))
  lines.append('| plateau | ' + '| ' * by_step + ' | '.join(cells) + ' |')
  aligned = '' if by_step else (' The points evaluate at different steps, so each row is every point\'s k-th '
                                'evaluation (its steps: its eval_every_steps).')
  return (f'Validation accuracy by evaluation (mean over seeds). Plateau: the first evaluation from which it gains '
          f'less than {PLATEAU_GAIN * 100:g} point per evaluation over the next {PLATEAU_SPAN}. (A decaying '
          f'schedule gains until its end by design: there the row says how steeply.){aligned}\n\n' + '\n'.join(lines))


def _plateau_cell(values: Sequence[float], at: int | None, span: int) -> str:
  """The plateau row's cell of one point: where its curve plateaus, how steeply it still rises, or that it has too
  few evaluations to tell."""
  if at is not None:
    return f'evaluation {at + 1}'
  if span < 1:
    return 'one evaluation: cannot tell'
  gain = (values[-1] - values[-1 - span]) / span * 100
  return f'{"rising" if gain > 0 else "not rising"} at the end ({gain:+.2f} point per evaluation over the last {span})'


def _grid_cell(runs: Sequence[dict[float, float | None]], lr: float) -> str:
  """The mean over the runs that tried ``lr``, with how many did when not all; '–' for none, 'diverged' when
  every run that tried it diverged."""
  values = [run[lr] for run in runs if lr in run]
  finite = [v for v in values if v is not None]
  if not values:
    return '–'
  if not finite:
    return 'diverged'
  some = f' ({len(finite)} of {len(runs)} runs)' if len(finite) < len(runs) else ''
  return f'{np.mean(finite):.4g}{some}'


def _cell(value: Any) -> str:
  if value is None:
    return '–'
  if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, float) for v in value):
    mean, std = value
    return f'{mean:.4g} ± {std:.2g}' if std else f'{mean:.4g}'
  if isinstance(value, int):
    return f'{value:,}'
  return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The summary rows as a markdown table."""
  columns = list(rows[0])
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
  lines += ['| ' + ' | '.join(_cell(row[c]) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)


def write(workdir: str, results: Sequence[Result], histories: dict[str, list[dict[str, float]]],
          baseline: str = '') -> None:
  """Writes report.md, results.csv, results.json and the plots for the finished points; ``baseline`` names
  the point the others are compared with (default the first)."""
  rows = summarize(results)
  comparisons, grids = significance_table(results, baseline), grid_table(results)
  said, curves = conclusion(results, baseline), curve_table(results, histories)
  shifts, by_budget = invariance_table(results, baseline), budget_table(results, baseline)
  by_budget = '\n\n'.join(s for s in (budget_means_table(results), by_budget, budget_picks_table(results)) if s)
  files.write_json(os.path.join(workdir, 'results.json'),
                   {'points': [r.to_json() for r in results], 'summary': rows, 'conclusion': said,
                    'comparisons': comparisons, 'budgets': by_budget, 'learning_rates': grids, 'curves': curves,
                    'invariance': shifts},
                   sort_keys=False)
  _write_csv(os.path.join(workdir, 'results.csv'), results)
  metric = main_metric(results)
  bars = _error_bars(results, metric)
  plots = [_plot_vs(workdir, rows, bars, metric, 'params'), _plot_vs(workdir, rows, bars, metric, 'flops'),
           _plot_per_setting(workdir, rows, bars, metric), _plot_learning_curves(workdir, histories, metric),
           _plot_invariance(workdir, results), _plot_first_layers(workdir, results),
           _plot_budgets(workdir, results, baseline)]
  text = (f'# Sweep report: {os.path.basename(os.path.abspath(workdir))}\n\n{len(results)} finished runs. '
          'Metrics are final values (mean ± sample std over seeds where seeds > 1); FLOPs are forward FLOPs '
          'per image (closed form); steps/s is the median over the run; wall_time_s is the point\'s total over its '
          f'seeds, every learning rate tried included.\n\n{markdown_table(rows)}\n\n')
  text += ''.join(f'{section}\n\n' for section in (said, comparisons, by_budget, grids, curves, shifts) if section)
  files.write_text(os.path.join(workdir, 'report.md'), text + ''.join(f'![{p}]({p})\n\n' for p in plots if p))


def _write_csv(path: str, results: Sequence[Result]) -> None:
  rows = [r.row() for r in results]
  fields = sorted({k for row in rows for k in row})
  overrides = sorted({k for r in results for k in r.overrides} - set(fields))  # 'seed' is a field already
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(fields + overrides)
  for r, row in zip(results, rows, strict=True):
    writer.writerow([row.get(k, '') for k in fields] + [r.overrides.get(k, '') for k in overrides])
  files.write_text(path, out.getvalue())


def _save(fig, workdir: str, name: str) -> str:
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, name), dpi=100)
  plt.close(fig)
  return name


@dataclasses.dataclass(frozen=True)
class Bar:
  """A point's mark on a plot: the mean over seeds, the 95 % interval's lower and upper reach from it (clipped to
  the metric's range: accuracies lie in [0, 1], where a t interval over 2 seeds can reach past either end) and
  each seed's value."""
  mean: float
  below: float
  above: float
  values: tuple[float, ...]
  clipped: bool


def _error_bars(results: Sequence[Result], metric: str) -> dict[str, Bar]:
  """Per point, its ``Bar`` (no reach for one seed)."""
  low, high = (0.0, 1.0) if 'accuracy' in metric else (-np.inf, np.inf)
  bars = {}
  for name, group in _group(results).items():
    values = tuple(r.metrics[metric] for r in group)
    mean, half = interval(list(values))
    half = 0.0 if np.isnan(half) else half
    below, above = min(half, mean - low), min(half, high - mean)
    bars[name] = Bar(mean, below, above, values, (below, above) != (half, half))
  return bars


def _bars_note(bars: dict[str, Bar]) -> str:
  """What a plot's error bars and dots are, or that there are no bars (one seed per point)."""
  if not any(b.below or b.above for b in bars.values()):
    return 'one seed per point: no error bars'
  clipped = ', clipped to [0, 1]' if any(b.clipped for b in bars.values()) else ''
  return f'bars: 95 % interval over seeds{clipped}; dots: the seeds'


def _draw(ax, x: float, bar: Bar, dots_x: float, **style) -> None:
  """A point's mean with its interval at ``x``, and its seeds as small dots beside it, at ``dots_x``."""
  ax.errorbar(x, bar.mean, yerr=[[bar.below], [bar.above]], fmt='o', capsize=3, **style)
  if len(bar.values) > 1:
    ax.plot([dots_x] * len(bar.values), bar.values, '.', color='black', markersize=4, alpha=0.6)


def _spread(xs: Sequence[float], factor: float = 1.06) -> list[float]:
  """Positions on a log axis where points that share an x stand side by side (each further one ``factor`` to the
  right) instead of hiding each other's bars."""
  seen: dict[float, int] = {}
  out = []
  for x in xs:
    out.append(x * factor ** seen.get(x, 0))
    seen[x] = seen.get(x, 0) + 1
  return out


def _human(value: float, _position: Any = None) -> str:
  """A tick label people read: 0.05, 1.7, 250, 12k, 1.6M."""
  for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(value) >= scale:
      return f'{value / scale:.3g}{suffix}'
  return f'{value:.3g}'


def _readable_log_axis(axis) -> None:
  """Plain tick labels on a log axis (matplotlib writes 1.7×10⁰); the minor ticks labelled too when the axis
  spans less than a decade, where it would otherwise show no label at all."""
  low, high = sorted(axis.axes.get_xlim() if axis.axis_name == 'x' else axis.axes.get_ylim())
  axis.set_major_formatter(ticker.FuncFormatter(_human))
  axis.set_minor_formatter(ticker.FuncFormatter(_human) if low > 0 and high / low < 10 else ticker.NullFormatter())


def _plot_vs(workdir: str, rows, bars, metric: str, x: str) -> str:
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  xs = [row[x] for row in rows]
  for row, at in zip(rows, _spread(xs), strict=True):
    bar = bars[row['point']]
    _draw(ax, at, bar, dots_x=at * 1.025)
    ax.annotate(row['point'], (at, bar.mean), textcoords='offset points', xytext=(4, 4), fontsize=7)
  ax.set(xscale='log', xlabel=f'{x} (log scale)', ylabel=metric)
  shared = '; points of equal x set side by side' if len(set(xs)) < len(xs) else ''
  ax.set_title(f'{metric} vs {x}\n' + textwrap.fill(f'({_bars_note(bars)}{shared})', 75), fontsize=10)
  ax.margins(x=0.15)
  _readable_log_axis(ax.xaxis)
  ax.grid(alpha=0.3)
  return _save(fig, workdir, f'{metric}_vs_{x}.png')


def _plot_per_setting(workdir: str, rows, bars, metric: str) -> str:
  """Each point's mean with its interval, as dots on an axis fitted to them: bars from zero would hide
  differences of a few tenths of a point, the ones an ablation is about."""
  fig, ax = plt.subplots(figsize=(max(6.5, 1 + 0.9 * len(rows)), 4.5))
  for i, row in enumerate(rows):
    _draw(ax, i, bars[row['point']], dots_x=i + 0.08, color='tab:blue')
  ax.set_xticks(range(len(rows)), [row['point'] for row in rows], rotation=30, ha='right', fontsize=8)
  ax.set(ylabel=metric)
  ax.margins(x=0.1, y=0.15)
  ax.grid(axis='y', alpha=0.3)
  ax.set_title(f'{metric} per setting\n({_bars_note(bars)})', fontsize=10)
  return _save(fig, workdir, f'{metric}_per_setting.png')


def _plot_learning_curves(workdir: str, histories: dict[str, list[dict]], metric: str) -> str:
  """Training loss, and the periodic evaluations: validation metrics (test ones where a run has no validation
  split). One colour per point, its seeds' runs alike, so that a colour names a point however many there are;
  the legend, a line per point, stands beside the plots rather than over the curves."""
  fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4))
  val = metric.replace('test_', 'val_', 1)
  periodic = val if any(val in r for h in histories.values() for r in h) else metric
  points = list(dict.fromkeys(records.RunName.parse(name).point for name in histories))
  colours = plt.get_cmap('tab10' if len(points) <= 10 else 'tab20')
  for name, history in histories.items():
    point = records.RunName.parse(name).point
    for ax, key in ((ax_train, 'train_loss'), (ax_eval, periodic)):
      xy = [(r['step'], r[key]) for r in history if key in r]
      if xy:
        ax.plot(*zip(*xy, strict=True), marker='.' if key == periodic else None, alpha=0.8, linewidth=1,
                color=colours(points.index(point) % colours.N), label=point)
  ax_train.set(xlabel='step', ylabel='train_loss (log scale)', yscale='log', title='training loss')
  _readable_log_axis(ax_train.yaxis)
  ax_eval.set(xlabel='step', ylabel=periodic, title=periodic)
  handles = dict(zip(*reversed(ax_eval.get_legend_handles_labels()), strict=True))  # one line per label
  if handles:
    ax_eval.legend(handles.values(), handles.keys(), fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1))
  return _save(fig, workdir, 'learning_curves.png')


def _plot_budgets(workdir: str, results: Sequence[Result], baseline: str = '') -> str | None:
  """Each comparison's difference from the baseline against the budget, with its 95 % interval."""
  tests = budget_tests(results, baseline)
  if not tests:
    return None
  metric, base = main_metric(results), baseline or next(iter(_group(results)))
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for k, (name, by_budget) in enumerate(tests.items()):
    xs = [f * 1.03 ** k for f in by_budget]  # side by side, not on each other's bars
    diffs = np.array([t['diff'] for t in by_budget.values()])
    below = np.nan_to_num(diffs - [t['low'] for t in by_budget.values()])
    above = np.nan_to_num(np.array([t['high'] for t in by_budget.values()]) - diffs)
    ax.errorbar(xs, diffs, yerr=[below, above], fmt='o-', capsize=3, label=f'{name}: {budget_summary(by_budget)}')
  ax.axhline(0.0, color='black', linewidth=0.8)
  ax.set(xscale='log', xlabel='budget (fraction of num_train_steps, log scale)',
         ylabel=f'{metric} difference from {base}')
  ax.set_title(f'{metric}: each point minus {base}, by budget\n(bars: 95 % paired interval over seeds)', fontsize=10)
  fractions = sorted({f for by_budget in tests.values() for f in by_budget})
  ax.set_xticks(fractions, [f'{f:g}' for f in fractions])  # the budgets themselves, not powers of ten
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return _save(fig, workdir, f'{metric}_difference_by_budget.png')


def _plot_invariance(workdir: str, results: Sequence[Result]) -> str | None:
  groups = {name: [r.invariance for r in group if r.invariance] for name, group in _group(results).items()}
  groups = {name: runs for name, runs in groups.items() if runs}
  if not groups:
    return None
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, runs in groups.items():
    for ax, key in zip(axes, ('accuracy', 'agreement', 'consistent_correct'), strict=True):
      values = [r.get(key, [np.nan] * len(r['shift'])) for r in runs]  # consistent_correct: absent in old runs
      ax.plot(runs[0]['shift'], np.mean(values, axis=0), marker='o', label=name)
  axes[0].set(xlabel='shift (pixels, diagonal)', ylabel='test accuracy', title='accuracy under input shifts')
  axes[1].set(xlabel='shift (pixels, diagonal)', ylabel='agreement', title='predictions unchanged by the shift')
  axes[2].set(xlabel='shift (pixels, diagonal)', ylabel='consistent_correct', title='correct unshifted and shifted')
  axes[2].legend(fontsize=7)
  return _save(fig, workdir, 'invariance.png')


def _plot_first_layers(workdir: str, results: Sequence[Result], per_row: int = 8) -> str | None:
  runs = [(name, os.path.join(workdir, group[0].name, FIRST_LAYER_FILE)) for name, group in _group(results).items()]
  runs = [(name, np.load(path)) for name, path in runs if os.path.exists(path)]
  if not runs:
    return None
  fig, axes = plt.subplots(len(runs), 1 + 2 * per_row, figsize=(1.1 * (1 + 2 * per_row), 1.3 * len(runs)),
                           squeeze=False)
  for r, (row, (name, data)) in enumerate(zip(axes, runs, strict=True)):
    image = data['image']
    row[0].imshow(_unit(image) if image.shape[-1] == 3 else image[..., 0], cmap='gray')
    row[0].set_ylabel(name, fontsize=7, rotation=0, ha='right')
    for i in range(per_row):
      for ax, maps, label in ((row[1 + i], data['filters'], 'filter'), (row[1 + per_row + i], data['maps'], 'map')):
        if i < len(maps):
          ax.imshow(maps[i], cmap='gray')
        if r == 0 and i < len(maps):  # the columns' titles once, above the first row: none between the rows
          ax.set_title(f'{label} {i}', fontsize=6)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle('input | first-layer filters (mean over input channels) | first-block feature maps', fontsize=9)
  return _save(fig, workdir, 'filters.png')


def _unit(x: np.ndarray) -> np.ndarray:
  return (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
