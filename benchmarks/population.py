r"""Populations, measured: member-images/s of one run's train step alone and of populations of 1, 3, 9 and 27
members (``train.Population``: each member's state on a leading axis, ``jax.vmap``), in one process, arms
alternating window by window; medians, and ratios to the run alone. ``--config.population=auto`` is on where a
population trains more member-images/s than runs one by one (measured here: not on CPU; docs/performance.md).

  python benchmarks/population.py --config.data.name=fashion_mnist --out=results/population/cpu.json
  python benchmarks/population.py --sizes=1,3 --windows=1       # the pooling sweep's model on shapes, quickly

Writes a JSON stamped with the command, commit, machine and versions (cnnjax/stamp.py).
"""

import functools
import json
import statistics

from absl import app, flags

from cnnjax.cli import parse_flags_with_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_string('experiment', 'pooling', 'Experiment whose model, optimizer and data are measured.')
flags.DEFINE_list('sizes', ['1', '3', '9', '27'], 'Population sizes (members: seeds 0, 1, ...).')
flags.DEFINE_integer('windows', 3, 'Timed windows per arm (the median is reported).')
flags.DEFINE_integer('calls', 1, 'Train-step calls per window (each runs the arm\'s steps per call).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('out', None, 'Write the results here as JSON.')
FLAGS = flags.FLAGS


def _arm(config, members: int):
  """(steps(n), steps per call) of the run alone (``members`` 0) or of a population, compiled and warmed up."""
  from timing import cnnjax_steps

  from cnnjax import train
  population = None
  if members:
    configs = tuple(apply_overrides(config, {'seed': seed}) for seed in range(members))
    population = train.Population(configs, tuple(f'member{i}' for i in range(members)))
  steps, run = cnnjax_steps(config, FLAGS.data_dir, population=population)
  steps(run.steps_per_dispatch)
  return steps, run.steps_per_dispatch


def main(argv):
  del argv
  from cnnjax import stamp
  config = apply_overrides(FLAGS.config, {'data.pipeline': 'device', 'rng_impl': 'threefry2x32'})
  sizes = [int(n) for n in FLAGS.sizes]
  arms = {'alone': (*_arm(config, 0), 1), **{f'population of {n}': (*_arm(config, n), n) for n in sizes}}
  from timing import alternating_seconds
  seconds = alternating_seconds({name: functools.partial(steps, FLAGS.calls * per_call)
                                 for name, (steps, per_call, _) in arms.items()}, FLAGS.windows)
  images = {name: FLAGS.calls * per_call * members * config.batch_size / statistics.median(seconds[name])
            for name, (_, per_call, members) in arms.items()}
  result = {**stamp.stamp(), 'experiment': FLAGS.experiment, 'dataset': config.data.name,
            'batch_size': config.batch_size, 'rng_impl': config.rng_impl, 'windows': FLAGS.windows,
            'member_images_per_second_median': {k: round(v) for k, v in images.items()},
            'ratio_to_alone': {k: round(v / images['alone'], 3) for k, v in images.items()},
            'window_seconds': {k: [round(x, 3) for x in v] for k, v in seconds.items()}}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  app.run(main, flags_parser=parse_flags_with_experiment)
