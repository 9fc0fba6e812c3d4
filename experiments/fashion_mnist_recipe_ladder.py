r"""The recipe's ablation ladder: fashion_mnist_recipe, then one training or evaluation practice from fast CIFAR-10
training (KellerJordan's airbench) added at each rung, each rung keeping the ones before it, 3 seeds each.

  python launch.py --experiment=fashion_mnist_recipe_ladder --workdir=results/runs/fashion_mnist_recipe_ladder \
      --out=results/experiments/fashion_mnist_recipe_ladder.json

results/runs/fashion_mnist_recipe_ladder keeps the finished runs' records (no checkpoints), so the ladder's ~8
hours of a 2-core CPU can span several machines: the command trains only the runs missing there.

Rungs: recipe (3 BN conv blocks, flips, label smoothing 0.1, Adam 3e-3 cosine, 20 epochs) -> + an EMA of the
weights (decay 0.998, a horizon of ~500 steps) -> + test-time flips and 1-pixel translations -> + label
smoothing 0.2 -> + random erasing (probability 0.5, Zhong et al.'s) over twice the epochs (40) -> + twice the
conv widths (64-128-256) -> + 1-pixel training shifts (reflect-pad by 1 and crop back). The practices that cost
nothing come first, the costly ones last (a 40-epoch run at double width took ~36 min on a 2-core Intel Xeon).
Each rung's learning rate is picked on validation by its first seed from (1e-3, 3e-3), extended while on the edge,
except the last rung's, which keeps +wide's pick (1e-3, bracketed there) to save two such runs; each run's tested
epoch is the best on validation. The report compares every rung with the recipe seed by seed: what each practice
adds, with its interval. The recipe that the goal (0.940) is judged on is the rung with the best mean validation
accuracy.
"""

import ml_collections

from experiments import fashion_mnist_recipe

EPOCH = fashion_mnist_recipe.EPOCH


def get_config() -> ml_collections.ConfigDict:
  config = fashion_mnist_recipe.get_config()
  config.seeds = 3
  config.lr_grid = (1e-3, 3e-3)
  config.lr_pick = 'point'
  return config


def get_sweep() -> list[dict]:
  ema = {'optimizer.ema_decay': 0.998}
  tta = {**ema, 'eval_flip': True, 'eval_translate': 1}
  smooth = {**tta, 'label_smoothing': 0.2}
  erasing = {**smooth, 'data.random_erasing': 0.5, 'num_train_steps': 40 * EPOCH}
  wide = {**erasing, 'model.features': (64, 128, 256)}
  shift = {**wide, 'data.augment_crop': True, 'data.crop_padding': 1, 'lr_grid': (1e-3,)}
  return [{'name': 'recipe'}, {'name': '+ema', **ema}, {'name': '+tta', **tta}, {'name': '+ls0.2', **smooth},
          {'name': '+erasing40', **erasing}, {'name': '+wide', **wide}, {'name': '+shift1', **shift}]
