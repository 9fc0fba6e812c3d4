r"""The Fashion-MNIST speedrun, timed over seeds: its test accuracy and wall seconds, its ladder and its frontier.

  python benchmarks/speedrun.py                                                # the speedrun, 5 seeds
  python benchmarks/speedrun.py --ladder --json=results/speedrun/ladder_cpu.json
  python benchmarks/speedrun.py --epochs=2,4,8 --json=results/speedrun/cpu.json   # and its frontier

A run is timed from the call of train.train_and_evaluate (in a fresh workdir, the data already prepared as
arrays on disk) to its return with the test accuracy: loading the arrays, initialisation, compilation (no
persistent compilation cache, so every run compiles), training, the end's validation and test evaluations and
its checkpoint. Seed s is one round: every point trains seed s, in an order rotated each round so that the
machine's drift falls on every point alike. Per point: the test and validation accuracy (mean, 95 % t interval,
per seed) and the seconds (median, per seed); with --ladder each rung is compared with the one before it, seed
by seed (paired t, and on validation, where the rungs were chosen). --epochs gives the accuracy-vs-seconds
frontier of the speedrun's config at other budgets. The top-level seeds/test_accuracy/seconds are the speedrun's
(the ladder's rung best on validation, or the config's own budget on the frontier).
"""

import itertools

from absl import app, flags
from racing import summary_over_seeds, time_run

from cnnjax.cli import parse_flags_with_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_string('experiment', 'fashion_mnist_speedrun', 'The speedrun experiment (its get_sweep is the ladder).')
flags.DEFINE_integer('seeds', 5, 'Seeds 0..n-1, one round each: every point once, in an order rotated per round.')
flags.DEFINE_bool('ladder', False, 'Run every rung of the experiment\'s ladder (get_sweep), not the speedrun alone.')
flags.DEFINE_list('epochs', [], 'Frontier: the speedrun\'s config at these numbers of epochs (e.g. 2,3,4,6).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('json', None, 'Also write the results as JSON here.')
FLAGS = flags.FLAGS


def budget(steps: int) -> dict:
  """Overrides that train for ``steps`` steps, evaluating, logging and saving once, at the end."""
  return {'num_train_steps': steps, 'eval_every_steps': steps, 'checkpoint_every_steps': steps,
          'log_every_steps': steps}


def points(experiment: str, ladder: bool, epochs: list[str], epoch: int) -> dict[str, dict]:
  """Name -> overrides of the experiment's config: the ladder's rungs, the frontier's budgets (``epoch`` steps
  an epoch), or the speedrun alone."""
  from cnnjax.cli import load_experiment
  if ladder:
    return {p['name']: {k: v for k, v in p.items() if k != 'name'} for p in load_experiment(experiment).get_sweep()}
  if epochs:
    return {f'{e} epochs': budget(round(float(e) * epoch)) for e in epochs}
  return {'speedrun': {}}


def against_previous(named: dict[str, dict]) -> dict[str, dict]:
  """Each ladder rung against the rung before it, paired by seed: test and validation differences."""
  from cnnjax import report
  names, out = list(named), {}
  for before, after in itertools.pairwise(names):
    out[after] = {m: report.paired(named[after][m]['per_seed'], named[before][m]['per_seed'])
                  for m in ('test_accuracy', 'val_accuracy') if m in named[after]}
    out[after]['seconds_ratio'] = named[after]['seconds']['median'] / named[before]['seconds']['median']
  return out


def speedrun_point(summaries: dict[str, dict], named: dict[str, dict], steps: int, ladder: bool) -> str | None:
  """The point that is the speedrun: the ladder's rung with the best mean validation accuracy (where its choices
  are made), else the point at the config's own number of steps (None where the frontier lacks it)."""
  if ladder:
    return max(summaries, key=lambda n: summaries[n]['val_accuracy']['mean'])
  return next((n for n, o in named.items() if o.get('num_train_steps', steps) == steps), None)


def main(argv):
  del argv
  from cnnjax import compiler, data, stamp, train
  compiler.set_default_xla_flags()
  compiler.set_compilation_cache('')  # every run compiles: compilation is part of the time
  config = FLAGS.config
  run = train.setup(config, FLAGS.data_dir)  # prepares the arrays once, before anything is timed
  epoch = data.split_sizes(config.data, run.pipeline.num_examples)[0] // config.batch_size
  named = points(FLAGS.experiment, FLAGS.ladder, FLAGS.epochs, epoch)
  runs = {name: [] for name in named}
  for seed in range(FLAGS.seeds):
    order = list(named)
    for k in range(len(order)):
      name = order[(seed + k) % len(order)]
      runs[name].append(time_run(apply_overrides(config, {**named[name], 'seed': seed}), FLAGS.data_dir))
      r = runs[name][-1]
      print(f'seed {seed} {name}: {r["seconds"]:.1f}s test {r["test_accuracy"]:.4f} val {r["val_accuracy"]:.4f}',
            flush=True)
  summaries = {name: summary_over_seeds(r) for name, r in runs.items()}
  best = speedrun_point(summaries, named, config.num_train_steps, FLAGS.ladder)
  result = {**stamp.stamp(), 'experiment': FLAGS.experiment, 'batch_size': config.batch_size,
            'steps_per_epoch': epoch, 'speedrun_point': best, **summaries.get(best, {}), 'points': summaries}
  if FLAGS.ladder:
    result['against_previous_rung'] = against_previous(summaries)
  print_table(summaries, result.get('against_previous_rung', {}))
  stamp.write(FLAGS.json, result)


def print_table(summaries: dict[str, dict], diffs: dict[str, dict]) -> None:
  print('\n| point | test accuracy (95 % interval) | val accuracy | seconds (median) | test vs previous | '
        'val vs previous |')
  print('| --- | ---: | ---: | ---: | ---: | ---: |')
  for name, s in summaries.items():
    d = diffs.get(name, {})
    cells = [f'{d[m]["diff"]:+.4f} [{d[m]["low"]:+.4f}, {d[m]["high"]:+.4f}]' if m in d else ''
             for m in ('test_accuracy', 'val_accuracy')]
    print(f'| {name} | {s["test_accuracy"]["mean"]:.4f} ± {s["test_accuracy"]["interval"]:.4f} | '
          f'{s["val_accuracy"]["mean"]:.4f} | {s["seconds"]["median"]:.1f} | {cells[0]} | {cells[1]} |')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags_with_experiment)
