r"""The real-data baseline: a batch-normalised CNN on Fashion-MNIST (offline, from Debian's dataset-fashion-mnist).

  apt-get install -y dataset-fashion-mnist     # as root, once: the original IDX files in /usr/share/datasets
  python launch.py --experiment=fashion_mnist --workdir=/tmp/cnnjax/fashion_mnist

conv32-BN-ReLU-maxpool -> conv64-BN-ReLU-maxpool -> dense256 -> dropout 0.3 -> 10, Adam with warm-up and cosine
decay, batch 128, 5 epochs of the 55,000 training images (the last 5,000 of TFDS's train split validate).
Expected accuracy: results/experiments/fashion_mnist.json (README, Experiments).
"""

import ml_collections

from experiments import shapes

EPOCH = 55_000 // 128  # steps per epoch of the training split at batch 128


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.data.name = 'fashion_mnist'
  config.model.features = (32, 64)
  config.model.dense = (256,)
  config.model.norm = 'batch'
  config.model.dropout = 0.3
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 200
  config.num_train_steps = 5 * EPOCH
  config.log_every_steps = 100
  config.eval_every_steps = EPOCH
  config.checkpoint_every_steps = EPOCH
  return config
