r"""Compile time of every ablation sweep point, with a cold and then a warm persistent compilation cache.

  python benchmarks/compile_times.py                   # stride, pooling, params, filters, heads, invariance
  python benchmarks/compile_times.py --experiments=pooling --json=/tmp/compile_times.json

Each pass runs in a fresh process, as a sweep point does: `cold` with an empty cache directory, then `warm`
with the directory the cold pass filled. Per point it times the first call of the parameter init, the train
step and the eval step (trace + compile or cache load + one run) minus a steady-state call, on one real batch
of the point's data. About 3-4 minutes on 2 CPU cores.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from cnnjax import files
from cnnjax.cli import ROOT, load_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_list('experiments', ['stride', 'pooling', 'params', 'filters', 'heads', 'invariance'],
                  'Experiments whose get_sweep() points are compiled.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (the offline datasets are generated on first use).')
flags.DEFINE_string('json', None, 'Also write the results as JSON here.')
flags.DEFINE_bool('default_xla_flags', True, 'As in launch.py: add cnnjax.compiler.DEFAULT_XLA_FLAGS.')
flags.DEFINE_string('worker_cache_dir', None, 'Internal: run one pass in this process with this cache.')
FLAGS = flags.FLAGS


def first_call_seconds(fn, steady_calls: int = 3) -> float:
  """Time of the first ``fn()`` (which must block) minus the median of the next ``steady_calls``."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  steady = []
  for _ in range(steady_calls):
    start = time.perf_counter()
    fn()
    steady.append(time.perf_counter() - start)
  return first - statistics.median(steady)


def point_times(config, data_dir: str | None) -> dict[str, float]:
  """Compile (or cache-load) seconds of one config's init, train step and eval step."""
  import jax

  from cnnjax import train
  run = train.setup(config, data_dir)
  init_rng, dropout_rng = run.keys()
  box = {}  # the latest state: each train call donates the one before
  init_s = first_call_seconds(lambda: box.update(state=jax.block_until_ready(run.init_state(init_rng))))
  box['state'] = run.backend.from_checkpoint(box['state'])
  batch = run.pipeline.train_inputs(0)()
  eval_batches, eval_fn = run.pipeline.evaluation('test', run.eval_step)
  eval_batch = run.backend.put_batch(next(iter(eval_batches)))

  def train_call():
    box['state'], metrics = run.train_step(box['state'], batch, dropout_rng)
    jax.block_until_ready(metrics)

  return {'init_s': init_s, 'train_step_s': first_call_seconds(train_call),
          'eval_step_s': first_call_seconds(lambda: jax.block_until_ready(run.eval_step(box['state'], eval_batch)))}


def worker(cache_dir: str) -> list[dict]:
  from cnnjax import compiler
  compiler.set_default_xla_flags(FLAGS.default_xla_flags)
  compiler.set_compilation_cache(cache_dir)
  from cnnjax import sweep
  rows = []
  for name in FLAGS.experiments:
    module = load_experiment(name)
    base = module.get_config()
    for point in sweep.expand(module.get_sweep(), 1, base.seed):
      rows.append({'experiment': name, 'point': point.name,
                   **point_times(apply_overrides(base, point.overrides), FLAGS.data_dir)})
      print(json.dumps(rows[-1]), file=sys.stderr)
  return rows


def run_pass(cache_dir: str) -> list[dict]:
  args = [sys.executable, os.path.abspath(__file__), f'--worker_cache_dir={cache_dir}',
          f'--experiments={",".join(FLAGS.experiments)}', f'--default_xla_flags={FLAGS.default_xla_flags}']
  if FLAGS.data_dir:
    args.append(f'--data_dir={FLAGS.data_dir}')
  proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    sys.exit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.worker_cache_dir:
    print(json.dumps(worker(FLAGS.worker_cache_dir)))
    return
  with tempfile.TemporaryDirectory(prefix='cnnjax-compile-cache-') as cache_dir:
    cold, warm = run_pass(cache_dir), run_pass(cache_dir)
  keys = ('init_s', 'train_step_s', 'eval_step_s')
  print('| experiment | point | ' + ' | '.join(f'{k} cold | {k} warm' for k in keys) + ' |')
  print('|' + ' --- |' * (2 + 2 * len(keys)))
  for c, w in zip(cold, warm, strict=True):
    print(f'| {c["experiment"]} | {c["point"]} | ' + ' | '.join(f'{c[k]:.2f} | {w[k]:.2f}' for k in keys) + ' |')
  for name, rows in (('cold', cold), ('warm', warm)):
    print(f'{name}: train step max {max(r["train_step_s"] for r in rows):.2f} s, median '
          f'{statistics.median(r["train_step_s"] for r in rows):.2f} s; init + train + eval median '
          f'{statistics.median(sum(r[k] for k in keys) for r in rows):.2f} s')
  if FLAGS.json:
    files.write_json(FLAGS.json, {'cold': cold, 'warm': warm}, sort_keys=False)


if __name__ == '__main__':
  app.run(main)
