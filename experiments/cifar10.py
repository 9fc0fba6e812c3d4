r"""The `large` CNN on CIFAR-10 with flip and crop augmentation; needs internet once.

  python launch.py --experiment=cifar10 --workdir=/tmp/cnnjax/cifar10

Not run here (no internet).
"""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.data.name = 'cifar10'
  config.data.augment_flip = True
  config.data.augment_crop = True
  config.model.variant = 'large'
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 5e-4
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 500
  config.num_train_steps = 20_000
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
