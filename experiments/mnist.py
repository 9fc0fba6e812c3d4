r"""The `base` CNN (the flax/examples/mnist model: conv32-conv64-dense256) on MNIST; needs internet once.

  python launch.py --experiment=mnist --workdir=/tmp/cnnjax/mnist --data_dir=~/tensorflow_datasets

Not run here (no internet); the benchmark uses this model on synthetic batches.
"""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.data.name = 'mnist'
  config.model.variant = 'base'
  config.model.pool = 'avg'
  config.optimizer.name = 'momentum'
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = 'cosine'
  config.num_train_steps = 4000
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
