r"""Binary cats-vs-dogs (the seed's example) at 128x128 with a sigmoid head; needs internet once.

  python launch.py --experiment=cats_vs_dogs --workdir=/tmp/cnnjax/cats_vs_dogs

The images vary in size and are resized to config.data.image_size; the first 80% of TFDS's only split
trains, the rest tests. Not run here (no internet).
"""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.data.name = 'cats_vs_dogs'
  config.data.image_size = 128
  config.data.augment_flip = True
  config.head = 'binary'
  config.model.features = (32, 64, 128, 128)
  config.model.dense = (256,)
  config.model.dropout = 0.3
  config.optimizer.learning_rate = 1e-3
  config.num_train_steps = 5_000
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
