r"""Fashion-MNIST in a minute of a 2-core CPU: the fastest cnnjax route to a strong test accuracy, for iterating.

  python benchmarks/speedrun.py --json=results/speedrun/cpu.json        # the speedrun: 5 seeds, timed
  python benchmarks/speedrun.py --ladder --json=results/speedrun/ladder_cpu.json
  python launch.py --experiment=fashion_mnist_speedrun --workdir=/tmp/cnnjax/fm_speedrun   # one run, as usual

fashion_mnist's batch-normalised CNN (conv32-BN-ReLU-maxpool -> conv64-... -> dense256 -> dropout 0.3 -> 10)
with the practices of fast CIFAR-10 training (KellerJordan's airbench) that paid on Fashion-MNIST's validation
split, each a config field: horizontal flips, label smoothing, test-time flips and an EMA of the weights
(get_sweep is the ladder that added them one at a time). Validation is evaluated once, at the end (choices were
made on it); the test split once, on the last weights. Timed from the call that trains (data already prepared
as arrays) to its test accuracy, compilation included (no compilation cache). Measured: docs/studies.md,
Fashion-MNIST speedrun; results/speedrun.
"""

import ml_collections

from experiments import fashion_mnist

EPOCH = fashion_mnist.EPOCH
EPOCHS = 4


def get_config() -> ml_collections.ConfigDict:
  config = fashion_mnist.get_config()
  config.seeds = 5
  config.model.dropout = 0.0
  config.data.augment_flip = True
  config.label_smoothing = 0.2
  config.optimizer.schedule = 'triangular'
  config.eval_flip = True
  config.optimizer.ema_decay = 0.99
  config.num_train_steps = EPOCHS * EPOCH
  config.eval_every_steps = config.num_train_steps  # one validation evaluation, at the end
  config.checkpoint_every_steps = config.num_train_steps
  config.log_every_steps = config.num_train_steps
  config.test_checkpoint = 'last'
  return config


def get_sweep() -> list[dict]:
  """The ladder: fashion_mnist's model and recipe at this budget, then one practice added per rung, each rung
  keeping the ones before it (the last rung is get_config)."""
  base = {'model.dropout': 0.3, 'data.augment_flip': False, 'label_smoothing': 0.0,
          'optimizer.schedule': 'warmup_cosine', 'eval_flip': False, 'optimizer.ema_decay': 0.0}
  rungs = [('base', {}), ('-dropout', {'model.dropout': 0.0}), ('+flip', {'data.augment_flip': True}),
           ('+ls0.2', {'label_smoothing': 0.2}), ('+triangular', {'optimizer.schedule': 'triangular'}),
           ('+tta', {'eval_flip': True}), ('+ema', {'optimizer.ema_decay': 0.99})]
  sweep, overrides = [], dict(base)
  for name, change in rungs:
    overrides = {**overrides, **change}
    sweep.append({'name': name, **overrides})
  return sweep
