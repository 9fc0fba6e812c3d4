r"""Time to accuracy on real data: cnnjax as a user runs it against PyTorch CPU (eager, channels_last,
torch.compile) on the same model, data, optimizer, schedule and batch, in one process, arms alternating.

  python benchmarks/time_to_accuracy.py                              # fashion_mnist, 4 epochs, target 0.92
  python benchmarks/time_to_accuracy.py --rounds=1 --arms=cnnjax,torch_compile --json=/tmp/tta.json
  python benchmarks/time_to_accuracy.py --experiment=fashion_mnist --config.batch_size=256

Every arm trains on all 60,000 training images (val_fraction=0) and evaluates the 10,000 test images after
each epoch; an arm's seconds to target are the wall seconds from its start to the end of the first evaluation
whose test accuracy reaches --target (training, evaluation and compilation included; data already prepared).
cnnjax: train.train_and_evaluate with its tf.data pipeline (arm cnnjax) or its device pipeline (cnnjax_device:
the data on the device, 10 steps per call), checkpoints and logging, in a fresh workdir, the evaluation times
read from metrics.jsonl. PyTorch: benchmarks/torch_reference.py's mirror, data as in-memory
arrays normalised as cnnjax's pipeline does, shuffled per epoch. Medians over --rounds rounds (each round runs
every arm once); the JSON has every run. Needs torch (pip install torch).
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference  # noqa: E402

from cnnjax.config import apply_overrides, parse_flags_with_experiment  # noqa: E402

flags.DEFINE_string('experiment', 'fashion_mnist', 'Experiment whose model, optimizer and data are raced.')
flags.DEFINE_float('target', 0.92, 'Test accuracy to reach.')
flags.DEFINE_integer('epochs', 4, 'Epochs per run (the schedule spans them).')
flags.DEFINE_integer('rounds', 3, 'Rounds; each runs every arm once, in turn.')
CNNJAX_ARMS = {'cnnjax': {}, 'cnnjax_device': {'data.pipeline': 'device'}}  # arm -> overrides of the config
flags.DEFINE_list('arms', ['cnnjax', 'cnnjax_device', *torch_reference.ARMS], 'Arms to run.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('json', None, 'Also write the results as JSON here.')
FLAGS = flags.FLAGS


def race_config(config):
  """The experiment's config on the whole training split, evaluated on test after every epoch."""
  from cnnjax import data
  builder = data.get_builder(apply_overrides(config, {'data.val_fraction': 0.0}).data, FLAGS.data_dir)
  epoch = builder.info.splits[data.get_spec(config.data.name).train_split].num_examples // config.batch_size
  steps = FLAGS.epochs * epoch
  return apply_overrides(config, {'data.val_fraction': 0.0, 'num_train_steps': steps, 'eval_every_steps': epoch,
                                  'checkpoint_every_steps': epoch, 'test_checkpoint': 'last', 'lr_grid': ()})


def in_memory(run, split: str):
  """(images [N, H, W, C] float32 normalised as cnnjax's pipeline, labels [N]) of a split."""
  import numpy as np
  import tensorflow_datasets as tfds

  from cnnjax import data
  spec = data.get_spec(run.config.data.name)
  ds = tfds.as_numpy(run.builder.as_dataset(split=getattr(run.splits, split), batch_size=-1))
  images = (ds['image'].astype(np.float32) / 255 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std,
                                                                                                  np.float32)
  return images, ds['label'].astype(np.int64)


def run_cnnjax(config) -> list[tuple[int, float, float]]:
  """(step, seconds since the start, test accuracy) of each evaluation of one cnnjax run."""
  from cnnjax import train
  with tempfile.TemporaryDirectory(prefix='cnnjax-tta-') as workdir:
    start = time.time()
    train.train_and_evaluate(config, workdir, FLAGS.data_dir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
  return [(r['step'], r['time'] - start, r['test_accuracy']) for r in rows if 'test_accuracy' in r]


def run_torch(config, arm: str, train_data, test_data, image_shape, num_outputs: int
              ) -> list[tuple[int, float, float]]:
  """(step, seconds since the start, test accuracy) of each evaluation of one PyTorch run."""
  import numpy as np
  (images, labels), (test_images, test_labels) = train_data, test_data
  start = time.time()
  trainer = torch_reference.Trainer(config, image_shape, num_outputs, arm)
  order, evals, rng, batch = np.arange(len(images)), [], np.random.default_rng(config.seed), config.batch_size
  for step in range(1, config.num_train_steps + 1):
    i = (step - 1) % config.eval_every_steps
    if i == 0:
      order = rng.permutation(len(images))
    idx = order[i * batch:(i + 1) * batch]
    trainer.train_step(images[idx], labels[idx])
    if step % config.eval_every_steps == 0:
      evals.append((step, time.time() - start,
                    trainer.accuracy(test_images, test_labels, config.eval_batch_size)))
  return evals


def summarize(evals: list[list[tuple[int, float, float]]], target: float) -> dict:
  """Median seconds to target over the runs (None unless every run reached it) and median final accuracy."""
  reached = [next((s for _, s, acc in e if acc >= target), None) for e in evals]
  return {'seconds_to_target': statistics.median(reached) if None not in reached else None,
          'final_test_accuracy': statistics.median(e[-1][2] for e in evals),
          'reached': f'{sum(r is not None for r in reached)}/{len(reached)}',
          'runs': [[{'step': st, 'seconds': s, 'test_accuracy': a} for st, s, a in e] for e in evals]}


def main(argv):
  del argv
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  compiler.set_compilation_cache(None)
  from cnnjax import train
  config = race_config(FLAGS.config)
  for arm in FLAGS.arms:
    if arm not in CNNJAX_ARMS and arm not in torch_reference.ARMS:
      raise app.UsageError(f'--arms: {arm!r} is not one of {", ".join([*CNNJAX_ARMS, *torch_reference.ARMS])}')
  torch_reference.check_supported(config)
  for arm in CNNJAX_ARMS.values():  # prepares the data (and the device pipeline's arrays) once, before any timing
    train.setup(apply_overrides(config, arm), FLAGS.data_dir)
  run = train.setup(apply_overrides(config, {'data.pipeline': 'host'}), FLAGS.data_dir)  # the PyTorch arms' data
  train_data, test_data = in_memory(run, 'train'), in_memory(run, 'test')
  evals = {arm: [] for arm in FLAGS.arms}
  for r in range(FLAGS.rounds):
    for arm in FLAGS.arms:
      evals[arm].append(run_cnnjax(apply_overrides(config, CNNJAX_ARMS[arm])) if arm in CNNJAX_ARMS else
                        run_torch(config, arm, train_data, test_data, run.info.image_shape, run.info.num_outputs))
      print(f'round {r} {arm}: ' + ', '.join(f'{s:.0f}s {a:.4f}' for _, s, a in evals[arm][-1]), flush=True)
  from stamp import stamp
  result = {**stamp(), 'target': FLAGS.target, 'experiment': FLAGS.experiment, 'epochs': FLAGS.epochs,
            'steps': config.num_train_steps, 'batch_size': config.batch_size,
            'arms': {arm: summarize(e, FLAGS.target) for arm, e in evals.items()}}
  best_torch = min((v['seconds_to_target'] for k, v in result['arms'].items() if k not in CNNJAX_ARMS
                    and v['seconds_to_target'] is not None), default=None)
  print(f'\n{FLAGS.experiment}: {FLAGS.epochs} epochs of batch {config.batch_size}, target test accuracy '
        f'{FLAGS.target}, medians over {FLAGS.rounds} rounds on {os.cpu_count()} CPU cores')
  print('| arm | seconds to target | reached | final test accuracy | vs best PyTorch |')
  print('| --- | ---: | ---: | ---: | ---: |')
  for arm, v in result['arms'].items():
    s = v['seconds_to_target']
    ratio = f'{s / best_torch:.2f}x' if s is not None and best_torch else '–'
    print(f'| {arm} | {"not reached" if s is None else f"{s:.0f}"} | {v["reached"]} | '
          f'{v["final_test_accuracy"]:.4f} | {ratio} |')
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags_with_experiment)
