r"""Time to accuracy on real data: cnnjax as a user runs it against PyTorch CPU (eager, channels_last,
torch.compile) on the same model, data, optimizer, schedule and batch, in one process, arms alternating.

  python benchmarks/time_to_accuracy.py                              # fashion_mnist, 4 epochs, target 0.92
  python benchmarks/time_to_accuracy.py --rounds=1 --arms=cnnjax,torch_compile --json=/tmp/tta.json
  python benchmarks/time_to_accuracy.py --experiment=fashion_mnist --config.batch_size=256

Every arm trains on all 60,000 training images (val_fraction=0) and evaluates the 10,000 test images after
each epoch; an arm's seconds to target are the wall seconds from its start to the end of the first evaluation
whose test accuracy reaches --target (training, evaluation and compilation included; data already prepared).
cnnjax: train.train_and_evaluate with its host pipeline (arm cnnjax: the arrays read on the host) or its device
pipeline (cnnjax_device: the data on the device, 10 steps per call), checkpoints and logging, in a fresh workdir,
the evaluation times read from metrics.jsonl. PyTorch: benchmarks/torch_reference.py's mirror, data as in-memory
arrays normalised as cnnjax's pipeline does, shuffled per epoch. Medians over --rounds rounds (each round runs
every arm once); the JSON has every run. Needs torch (pip install torch).
"""

import os

import torch_reference
from absl import app, flags
from racing import normalised, race_config, run_cnnjax, run_torch, summarize

from cnnjax.cli import parse_flags_with_experiment
from cnnjax.config import apply_overrides

flags.DEFINE_string('experiment', 'fashion_mnist', 'Experiment whose model, optimizer and data are raced.')
flags.DEFINE_float('target', 0.92, 'Test accuracy to reach.')
flags.DEFINE_integer('epochs', 4, 'Epochs per run (the schedule spans them).')
flags.DEFINE_integer('rounds', 3, 'Rounds; each runs every arm once, in turn.')
# arm -> overrides of the config
CNNJAX_ARMS = {'cnnjax': {'data.pipeline': 'host'}, 'cnnjax_device': {'data.pipeline': 'device'}}
flags.DEFINE_list('arms', ['cnnjax', 'cnnjax_device', *torch_reference.ARMS], 'Arms to run.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('json', None, 'Also write the results as JSON here.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  compiler.set_compilation_cache(None)
  from cnnjax import train
  config, run = race_config(FLAGS.config, FLAGS.data_dir, FLAGS.epochs)
  for arm in FLAGS.arms:
    if arm not in CNNJAX_ARMS and arm not in torch_reference.ARMS:
      raise app.UsageError(f'--arms: {arm!r} is not one of {", ".join([*CNNJAX_ARMS, *torch_reference.ARMS])}')
  torch_reference.check_supported(config)
  for arm in CNNJAX_ARMS.values():  # prepares the data of each pipeline once, before any timing
    train.setup(apply_overrides(config, arm), FLAGS.data_dir)
  train_data, test_data = normalised(run, 'train'), normalised(run, 'test')
  evals = {arm: [] for arm in FLAGS.arms}
  for r in range(FLAGS.rounds):
    for arm in FLAGS.arms:
      evals[arm].append(run_cnnjax(apply_overrides(config, CNNJAX_ARMS[arm]), FLAGS.data_dir) if arm in CNNJAX_ARMS else
                        run_torch(config, arm, train_data, test_data, run.info.image_shape, run.info.num_outputs))
      print(f'round {r} {arm}: ' + ', '.join(f'{s:.0f}s {a:.4f}' for _, s, a in evals[arm][-1]), flush=True)
  from cnnjax import stamp
  result = {**stamp.stamp(), 'target': FLAGS.target, 'experiment': FLAGS.experiment, 'epochs': FLAGS.epochs,
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
  stamp.write(FLAGS.json, result)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags_with_experiment)
