r"""Several budgets from one run, measured: for each seed, one warmup-stable-decay run with
``--config.budgets=(0.25,0.5,1.0)`` (each shorter budget's cooldown branched from its constant phase) against
separate warmup-cosine runs of each budget (the experiment's own schedule), on Fashion-MNIST. Per budget: the
test accuracy of the branch and of the cosine run, seed by seed, their mean paired difference with its 95 %
interval; and the wall time of the branched run against the longest cosine run alone and against all the cosine
runs (compilation included: each run compiles its own programs, as a user's would).

  python benchmarks/budget_branches.py --out=results/budgets/fashion_mnist_cpu.json

Writes a JSON stamped with the command, commit, machine and versions (cnnjax/stamp.py).
"""

import json
import os
import tempfile
import time

from absl import app, flags

from cnnjax.cli import load_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_string('experiment', 'fashion_mnist', 'Experiment whose model, optimizer and data are measured.')
flags.DEFINE_integer('seeds', 3, 'Seeds 0..n-1; each trains one branched run and one cosine run per budget.')
flags.DEFINE_float('epochs', 6.0, 'The longest budget, in epochs of the training split.')
flags.DEFINE_list('budgets', ['0.25', '0.5', '1.0'], 'Budgets, fractions of the longest.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('out', None, 'Write the results here as JSON.')
FLAGS = flags.FLAGS


def _timed(config, workdir: str) -> tuple[dict, float]:
  from cnnjax import train
  start = time.perf_counter()
  metrics = train.train_and_evaluate(config, workdir, FLAGS.data_dir).metrics
  return metrics, time.perf_counter() - start


def main(argv):
  del argv
  from cnnjax import budgets, data, report, stamp, train
  fractions = tuple(float(b) for b in FLAGS.budgets)
  base = load_experiment(FLAGS.experiment).get_config()
  epoch = data.split_sizes(base.data, train.setup(base, FLAGS.data_dir).pipeline.num_examples)[0] // base.batch_size
  steps = round(FLAGS.epochs * epoch)
  wsd = apply_overrides(base, {'optimizer.schedule': 'wsd', 'budgets': fractions, 'num_train_steps': steps})
  per_budget = {f: {'branch': [], 'cosine': []} for f in fractions}
  seconds = {name: [] for name in ('branched run (every budget)', 'cosine run of the longest budget',
                                   'cosine runs (every budget)')}
  with tempfile.TemporaryDirectory(prefix='cnnjax-budgets-') as root:
    for seed in range(FLAGS.seeds):
      metrics, wall = _timed(apply_overrides(wsd, {'seed': seed}), os.path.join(root, f'wsd-{seed}'))
      seconds['branched run (every budget)'].append(wall)
      cosine_total = 0.0
      for f in fractions:
        per_budget[f]['branch'].append(metrics[f'{budgets.label(f)}/test_accuracy'])
        cosine = apply_overrides(base, {'seed': seed, 'num_train_steps': budgets.steps(wsd, f)})
        cosine_metrics, wall = _timed(cosine, os.path.join(root, f'cosine-{seed}-{f:g}'))
        per_budget[f]['cosine'].append(cosine_metrics['test_accuracy'])
        cosine_total += wall
      seconds['cosine run of the longest budget'].append(wall)
      seconds['cosine runs (every budget)'].append(cosine_total)
  rows = {}
  for f, runs in per_budget.items():
    paired = report.paired(runs['branch'], runs['cosine'])
    rows[f'{f:g}'] = {'epochs': round(budgets.steps(wsd, f) / epoch, 3), 'steps': budgets.steps(wsd, f),
                      'branch_test_accuracy': runs['branch'], 'cosine_test_accuracy': runs['cosine'],
                      'branch_minus_cosine': {k: paired[k] for k in ('diff', 'low', 'high', 'p')}}
  longest = sum(seconds['cosine run of the longest budget'])
  result = {**stamp.stamp(), 'experiment': FLAGS.experiment, 'seeds': FLAGS.seeds, 'budgets': rows,
            'cooldown_fraction': wsd.optimizer.cooldown_fraction, 'wall_seconds': seconds,
            'branched_over_longest_cosine': round(sum(seconds['branched run (every budget)']) / longest, 3),
            'branched_over_every_cosine': round(sum(seconds['branched run (every budget)'])
                                                / sum(seconds['cosine runs (every budget)']), 3)}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  app.run(main)
