"""The shared base of the ablation sweeps: the shapes baseline, shortened so that a sweep runs in minutes, with
5 seeds per point and the learning rate picked per run on validation from a grid (extended past its edge while the
pick lies there, up to twice).

On Fashion-MNIST add --config.data.name=fashion_mnist (300 steps of batch 128: 0.7 epochs)."""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.num_train_steps = 300
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 300
  config.keep_checkpoints = 1
  config.seeds = 5
  config.lr_grid = (1e-3, 3e-3, 1e-2)
  return config
