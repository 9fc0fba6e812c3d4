r"""The `small` CNN on scikit-learn's 8x8 handwritten digits (offline, 1,437 train / 360 test images).

  python launch.py --experiment=digits --workdir=/tmp/cnnjax/digits

Runtime: 20-26 s in all on 2 CPU cores (600 steps of the small CNN). Measured: test accuracy 0.9889 (chance 0.1).
"""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.data.name = 'digits'
  config.num_train_steps = 600
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  return config
