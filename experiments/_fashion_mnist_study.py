"""The shared base of the Fashion-MNIST studies: the ablation baseline (the `small` CNN, Adam with warm-up and
cosine decay, batch 128) trained for BUDGET_EPOCHS epochs of Fashion-MNIST's 55,000 training images, 5 seeds.

The budget was chosen on validation by a stated rule, not by cost (experiments/fashion_mnist_budget.py,
results/experiments/fashion_mnist_budget.json): at a constant rate this baseline's validation accuracy stops
gaining 0.2 point per epoch at epoch 3; under the studies' cosine schedule, the smallest of 3, 6 and 12 epochs
whose doubling gains less than 0.2 point of validation accuracy is 6 (3 -> 6: +0.51, 6 -> 12: -0.02). Each
point's learning rate is picked from (1e-3, 3e-3, 1e-2), extended past its edge while the pick lies there, by its
first seed's validation accuracy; the other four seeds train at that rate (--config.lr_pick=point). Every
report compares each point with the baseline seed by seed (paired t, Holm-adjusted) and ends its
validation-curve table with where each point plateaus, so a reader can see which points the budget left still
learning.

The baseline point (the `small` CNN with max pooling, stride 1, a learned first layer) is the same config in
the pooling, stride, parameter and filter studies; train it once by copying its runs between the studies'
workdirs (the resume checks that the config is the same), e.g. for the stride study:
  for s in 0 1 2 3 4; do d=STRIDE/stride=1,seed=$s; mkdir -p $d; cp -r POOLING/pool=max,seed=$s/lr=* $d/; done
"""

import ml_collections

from experiments import _ablation, fashion_mnist

EPOCH = fashion_mnist.EPOCH
BUDGET_EPOCHS = 6  # results/experiments/fashion_mnist_*_3_epochs.json are the studies at the constant-rate plateau


def get_config() -> ml_collections.ConfigDict:
  config = _ablation.get_config()
  config.data.name = 'fashion_mnist'
  config.num_train_steps = BUDGET_EPOCHS * EPOCH
  config.eval_every_steps = EPOCH
  config.checkpoint_every_steps = EPOCH
  config.lr_pick = 'point'
  return config


def by_budget(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The studies at several budgets from one run: 12 epochs of warmup-stable-decay with cooldowns branched at
  1.5, 3 and 6 epochs (each the last 20 % of its budget), the learning rate picked at each budget on the mean
  validation accuracy over the 5 seeds by successive halving (cnnjax/halving.py)."""
  config.num_train_steps = 12 * EPOCH
  config.optimizer.schedule = 'wsd'
  config.budgets = (0.125, 0.25, 0.5, 1.0)
  config.lr_pick = 'halving'
  return config
