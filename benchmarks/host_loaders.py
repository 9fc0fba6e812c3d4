r"""The host pipeline's loader, measured: the prepared arrays, memory-mapped and gathered in the device
pipeline's order (what `--config.data.pipeline=host` uses), against grain over TFDS's array_record data source,
each delivering Fashion-MNIST training batches (shuffled, raw uint8 [batch, 28, 28, 1]; the step normalises) with
no train step, in one process, arms alternating window by window, after one warm-up epoch each. (The tf.data arm
of the results measured at 0efa554 was the host pipeline before the arrays; tf.data has since gone, and that
commit's copy of this script reruns it.)

  pip install grain
  python benchmarks/host_loaders.py --out=results/host_loaders/cpu.json

The dataset is prepared a second time, as array_record files, in a temporary data_dir (from the same IDX
files). Beside the loaders the JSON carries what the fashion_mnist train step consumes on this machine
(results/pipelines/<machine>.json), so a loader's rate reads as headroom over the step.
"""

import json
import os
import statistics
import tempfile
import time

from absl import app, flags

from cnnjax.cli import load_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_integer('windows', 5, 'Timed windows per arm (the median is reported).')
flags.DEFINE_integer('batches', 200, 'Batches per window.')
flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_integer('threads', 2, 'grain: read threads.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (the host pipeline\'s arrays).')
flags.DEFINE_string('out', None, 'Write the results here as JSON.')
FLAGS = flags.FLAGS


def host_batches(config):
  """The host pipeline's training batches, as a run draws them."""
  from cnnjax import train
  run = train.setup(apply_overrides(config, {'data.pipeline': 'host'}), FLAGS.data_dir)
  return run.pipeline.train_batches()


def grain_batches(config, data_dir: str):
  """The same stream from grain: a seeded shuffle of the array_record data source, batched raw (the step
  normalises, as it does the host pipeline's)."""
  import grain

  from cnnjax import data
  from cnnjax.datasets import idx
  spec = data.get_spec(config.data.name)
  builder = idx.prepare(config.data.name, spec.source_dir, data_dir, 'array_record')
  dataset = (grain.MapDataset.source(builder.as_data_source('train')).shuffle(seed=config.seed).repeat()
             .map(lambda ex: {'image': ex['image'], 'label': ex['label']})
             .batch(FLAGS.batch_size, drop_remainder=True))
  options = grain.ReadOptions(num_threads=FLAGS.threads, prefetch_buffer_size=4 * FLAGS.batch_size)
  return iter(dataset.to_iter_dataset(options))


def main(argv):
  del argv
  from cnnjax import stamp
  config = apply_overrides(load_experiment('fashion_mnist').get_config(), {'batch_size': FLAGS.batch_size})
  with tempfile.TemporaryDirectory(prefix='cnnjax-grain-') as grain_dir:
    arms = {'arrays (host pipeline)': host_batches(config), 'grain (array_record)': grain_batches(config, grain_dir)}
    epoch = 60_000 // FLAGS.batch_size
    for batches in arms.values():  # one epoch each: the page cache filled
      for _ in range(epoch):
        next(batches)
    seconds = {name: [] for name in arms}
    for _ in range(FLAGS.windows):
      for name, batches in arms.items():
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
          next(batches)
        seconds[name].append(time.perf_counter() - start)
  images = {name: FLAGS.batches * FLAGS.batch_size / statistics.median(s) for name, s in seconds.items()}
  step = {}
  machine_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results', 'pipelines',
                              'cpu.json')
  if os.path.exists(machine_file):
    with open(machine_file) as f:
      step = json.load(f)['images_per_second_median']
  result = {**stamp.stamp(), 'batch_size': FLAGS.batch_size, 'windows': FLAGS.windows,
            'batches_per_window': FLAGS.batches,
            'grain_threads': FLAGS.threads, 'images_per_second_median': {k: round(v) for k, v in images.items()},
            'train_step_images_per_second (results/pipelines/cpu.json)': step,
            'window_seconds': {k: [round(x, 3) for x in v] for k, v in seconds.items()}}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  app.run(main)
