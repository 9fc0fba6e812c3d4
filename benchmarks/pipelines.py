r"""Where batches are made, measured: the same train step fed by the host pipeline (the prepared arrays,
memory-mapped, gathered on a prefetching thread), by the device pipeline one step per call and several steps per
call, and by one synthetic batch kept on the device (the step alone, the ceiling), in one process, arms
alternating window by window; medians and ratios to the host pipeline. (The tf.data arm of the results measured at
0efa554 was the host pipeline before the arrays; tf.data has since gone, and that commit's copy of this script
reruns it.)

  python benchmarks/pipelines.py --out=results/pipelines/cpu.json               # fashion_mnist, batch 128
  python benchmarks/pipelines.py --experiment=shapes --out=/tmp/shapes.json

Writes a JSON stamped with the command, commit, machine and versions (cnnjax/stamp.py).
"""

import functools
import json
import statistics

from absl import app, flags

from cnnjax.cli import parse_flags_with_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_string('experiment', 'fashion_mnist', 'Experiment whose model, optimizer and data are measured.')
flags.DEFINE_integer('windows', 7, 'Timed windows per arm (the median is reported).')
flags.DEFINE_integer('steps', 40, 'Train steps per window.')
flags.DEFINE_list('steps_per_dispatch', ['1', '10'], 'Device-pipeline arms: steps per call.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('out', None, 'Write the results here as JSON.')
FLAGS = flags.FLAGS


def _arm(config, data_dir, pipeline: str, steps_per_call: int, synthetic: bool = False):
  """A function running n steps of the arm, blocking, compiled and warmed up."""
  from timing import cnnjax_steps

  overrides = {'data.pipeline': pipeline, 'steps_per_dispatch': steps_per_call}
  steps, _ = cnnjax_steps(apply_overrides(config, overrides), data_dir, synthetic)
  steps(2 * steps_per_call)
  return steps


def main(argv):
  del argv
  from cnnjax import stamp
  config = FLAGS.config
  arms = {'host (arrays)': _arm(config, FLAGS.data_dir, 'host', 1)}
  arms['synthetic batch on the device'] = _arm(config, FLAGS.data_dir, 'host', 1, synthetic=True)
  for k in map(int, FLAGS.steps_per_dispatch):
    arms[f'device, {k} step{"s" * (k > 1)} per call'] = _arm(config, FLAGS.data_dir, 'device', k)
  from timing import alternating_seconds
  seconds = alternating_seconds({name: functools.partial(steps, FLAGS.steps) for name, steps in arms.items()},
                                FLAGS.windows)
  images = {name: FLAGS.steps * config.batch_size / statistics.median(s) for name, s in seconds.items()}
  host = images['host (arrays)']
  result = {**stamp.stamp(), 'experiment': FLAGS.experiment, 'batch_size': config.batch_size,
            'windows': FLAGS.windows, 'steps_per_window': FLAGS.steps,
            'images_per_second_median': {k: round(v) for k, v in images.items()},
            'ratio_to_host': {k: round(v / host, 3) for k, v in images.items()},
            'window_seconds': {k: [round(x, 3) for x in v] for k, v in seconds.items()}}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  app.run(main, flags_parser=parse_flags_with_experiment)
