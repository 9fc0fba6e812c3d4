r"""What a sweep costs: wall time and XLA compilations of whole sweeps, arm against arm.

  python benchmarks/sweep_cost.py                                   # pooling on shapes: 1x1 vs 3x3
  python benchmarks/sweep_cost.py --experiment=stride --num_train_steps=300 --json=/tmp/sweep_cost.json
  python benchmarks/sweep_cost.py --arms=host,auto --dataset=fashion_mnist --num_train_steps=0 \
      --out=results/sweep_cost/pooling_fashion_mnist.json           # the pipelines, on the sweep as it ships
  python benchmarks/sweep_cost.py --arms=population_off,population_on --dataset=fashion_mnist --num_train_steps=0 \
      --seeds=5 --out=results/sweep_cost/population_fashion_mnist.json   # runs one by one vs as populations

Arms, each a whole sweep in a fresh process with an empty persistent compilation cache (as a new machine
has), run one after the other in the order given: `1x1` (seeds=1, no lr_grid: the sweep as it ran before seeds
and grids), `SxL` (--seeds seeds x --lr_grid rates per point), `host` (SxL on the host pipeline, one step per
call: how sweeps ran before the device pipeline), `auto` (SxL with the default pipeline and steps per call), and
`population_off` / `population_on` (SxL with threefry2x32 keys, each point's runs one by one or as populations).
Per arm: runs trained (a grid's extensions included), wall seconds, backend compilations (XLA compiles) and
persistent-cache hits, seconds spent compiling, and each run's picked learning rate and test accuracy, with the
report's comparisons; every arm's runs are compared with the first arm's, run by run. The learning rate is a
value in the optimizer state (optax.inject_hyperparams), so every run of a point after its first loads the
program its first compiled.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from cnnjax import files
from cnnjax.cli import ROOT, load_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_string('experiment', 'pooling', 'A sweep experiment (one with get_sweep()).')
flags.DEFINE_list('arms', ['1x1', 'SxL'], 'Arms, run in this order: 1x1, SxL, host, auto.')
flags.DEFINE_string('dataset', None, 'Override the experiment\'s data.name.')
flags.DEFINE_integer('num_train_steps', 100, 'Steps per run (also the eval and checkpoint interval); 0 = the '
                     'experiment\'s own schedule.')
flags.DEFINE_integer('seeds', 3, 'Seeds per point in the SxL arm.')
flags.DEFINE_list('lr_grid', ['1e-3', '3e-3', '1e-2'], 'Learning rates per seed in the SxL arm.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (the offline datasets are generated on first use).')
flags.DEFINE_string('json', None, 'Also write the rows as JSON here.')
flags.DEFINE_string('out', None, 'Write the rows, stamped (command, commit, machine, versions), as JSON here.')
flags.DEFINE_string('worker', None, 'Internal: run this arm in this process.')
flags.DEFINE_string('worker_cache_dir', None, 'Internal: the arm\'s compilation cache.')
FLAGS = flags.FLAGS

COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'


ARMS = {'1x1': {'seeds': 1, 'lr_grid': ()}, 'SxL': {}, 'host': {'data.pipeline': 'host', 'steps_per_dispatch': 1},
        'auto': {'data.pipeline': 'auto', 'steps_per_dispatch': 'auto'},
        'population_off': {'rng_impl': 'threefry2x32', 'population': 'off'},
        'population_on': {'rng_impl': 'threefry2x32', 'population': 'on'}}


def arm_overrides(arm: str) -> dict:
  steps = FLAGS.num_train_steps
  common = {'num_train_steps': steps, 'eval_every_steps': steps, 'checkpoint_every_steps': steps} if steps else {}
  common |= {'data.name': FLAGS.dataset} if FLAGS.dataset else {}
  return {**common, 'seeds': FLAGS.seeds, 'lr_grid': tuple(float(x) for x in FLAGS.lr_grid), **ARMS[arm]}


def worker(arm: str, cache_dir: str) -> dict:
  """Runs the arm's sweep here and counts what JAX compiled and loaded from the cache."""
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  compiler.set_compilation_cache(cache_dir)
  from jax import monitoring

  from cnnjax import records, report, sweep
  counts = {'compiles': 0, 'compile_s': 0.0, 'cache_hits': 0}

  def on_duration(event, seconds, **kwargs):
    if event == COMPILE_EVENT:
      counts['compiles'] += 1
      counts['compile_s'] += seconds

  def on_event(event, **kwargs):
    counts['cache_hits'] += event == CACHE_HIT_EVENT

  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)
  module = load_experiment(FLAGS.experiment)
  config = apply_overrides(module.get_config(), arm_overrides(arm))
  with tempfile.TemporaryDirectory(prefix='cnnjax-sweep-cost-') as workdir:
    start = time.perf_counter()
    points = sweep.run(config, module.get_sweep, workdir, FLAGS.data_dir)
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, 'results.json')) as f:
      results = [records.RunResult.from_json(r) for r in json.load(f)['points']]
  runs = sum(len(r.lr.grid) if r.lr else 1 for r in results)
  per_run = {r.name: {'picked_lr': r.lr and r.lr.picked, 'lr_grid': r.lr and list(r.lr.grid),
                      'picked_on_edge': r.lr and r.lr.on_edge, 'test_accuracy': r.metrics.get('test_accuracy')}
             for r in results}
  return {'arm': arm, 'points': len(points), 'runs': runs, 'wall_s': wall, **counts, 'per_run': per_run,
          'comparisons': report.significance_table(results), 'grids': report.grid_table(results)}


def run_arm(arm: str) -> dict:
  with tempfile.TemporaryDirectory(prefix='cnnjax-sweep-cost-cache-') as cache_dir:
    args = [sys.executable, os.path.abspath(__file__), f'--worker={arm}', f'--worker_cache_dir={cache_dir}',
            f'--experiment={FLAGS.experiment}', f'--num_train_steps={FLAGS.num_train_steps}',
            f'--seeds={FLAGS.seeds}', f'--lr_grid={",".join(FLAGS.lr_grid)}']
    args += [f'--data_dir={FLAGS.data_dir}'] * bool(FLAGS.data_dir)
    args += [f'--dataset={FLAGS.dataset}'] * bool(FLAGS.dataset)
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    sys.exit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.worker:
    print(json.dumps(worker(FLAGS.worker, FLAGS.worker_cache_dir)))
    return
  unknown = [arm for arm in FLAGS.arms if arm not in ARMS]
  if unknown:
    raise app.UsageError(f'--arms: {unknown} unknown; choose from {", ".join(ARMS)}')
  rows = [run_arm(arm) for arm in FLAGS.arms]
  base = rows[0]
  steps = FLAGS.num_train_steps or 'the experiment\'s'
  print(f'{FLAGS.experiment} on {FLAGS.dataset or "its dataset"}, {steps} steps per run, fresh compilation cache '
        f'per arm; ratios to {base["arm"]}')
  print('| arm | runs | wall s | wall / first | XLA compiles | cache hits | compile s |')
  print('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
  for r in rows:
    print(f'| {r["arm"]} | {r["runs"]} | {r["wall_s"]:.0f} | {r["wall_s"] / base["wall_s"]:.2f} | '
          f'{r["compiles"]} | {r["cache_hits"]} | {r["compile_s"]:.1f} |')
  for r in rows[1:]:
    shared = sorted(set(r['per_run']) & set(base['per_run']))
    gaps = [abs(r['per_run'][n]['test_accuracy'] - base['per_run'][n]['test_accuracy']) for n in shared]
    same = sum(r['per_run'][n]['picked_lr'] == base['per_run'][n]['picked_lr'] for n in shared)
    print(f'{r["arm"]} vs {base["arm"]}: {len(shared)} runs in both, the same pick in {same}, largest test accuracy '
          f'difference {max(gaps, default=float("nan")):.4f}')
    r['vs_first'] = {'runs': len(shared), 'same_pick': same, 'max_test_accuracy_difference': max(gaps, default=None)}
  for r in rows:
    print(f'\n{r["arm"]}:\n{r["comparisons"]}\n\n{r["grids"]}')
  if FLAGS.json:
    files.write_json(FLAGS.json, rows, sort_keys=False)
  if FLAGS.out:
    from cnnjax import stamp
    stamp.write(FLAGS.out, {**stamp.stamp(), 'experiment': FLAGS.experiment, 'dataset': FLAGS.dataset, 'rows': rows})


if __name__ == '__main__':
  app.run(main)
