r"""Populations, measured: member-images/s of one run's train step alone and of populations of 1, 3, 9 and 27
members (``train.Population``: each member's state on a leading axis, mapped by --config.population_map), in one
process, arms alternating window by window; medians, and ratios to the run alone. ``--config.population=auto`` is
on where a population trains more member-images/s than runs one by one (measured here: not on CPU;
docs/performance.md).

  python benchmarks/population.py --config.data.name=fashion_mnist --out=results/population/cpu.json
  python benchmarks/population.py --sizes=1,3 --windows=1       # the pooling sweep's model on shapes, quickly

Writes a JSON stamped with the command, commit, machine and versions (cnnjax/stamp.py).
"""

import json

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


def main(argv):
  del argv
  import jax
  from timing import population_rates

  from cnnjax import stamp, train
  config = apply_overrides(FLAGS.config, {'data.pipeline': 'device', 'rng_impl': 'threefry2x32'})
  rates = population_rates(config, [int(n) for n in FLAGS.sizes], FLAGS.data_dir, FLAGS.windows, FLAGS.calls)
  result = {**stamp.stamp(), 'experiment': FLAGS.experiment, 'dataset': config.data.name,
            'batch_size': config.batch_size, 'rng_impl': config.rng_impl, 'windows': FLAGS.windows,
            'population_map': train.population_map(config, jax.default_backend()), **rates}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  app.run(main, flags_parser=parse_flags_with_experiment)
