r"""The benchmark table of Fashion-MNIST's README, reproduced by configs only (one sweep point per row).

  python launch.py --experiment=fashion_mnist_table --workdir=/tmp/cnnjax/fashion_mnist_table
  python launch.py --experiment=fashion_mnist_table --workdir=DIR --sweep_index=9   # one run: row 4, seed 0

Rows (published test accuracy), as expressed here; where the source does not pin a detail, the choice is
stated. Every row: Adam with 200 warm-up steps and cosine decay over 15 epochs, batch 128, 3x3 or 5x5 'SAME'
convs with 2x2 max pooling after each, ReLU, no augmentation. Both the learning rate and the epochs are chosen on
the validation split (the last 5,000 training images): the rate from (1e-3, 3e-3, 1e-2), extended past its edge
while the pick lies there, by each row's seed 0 (the other seeds train at its pick), and the epoch whose weights
are tested as the end-of-epoch evaluation with the best validation accuracy; the report's validation-curve
table shows where each row plateaus within the 15. The test split is evaluated once per run.
- tf_2conv_pool (0.916, TensorFlow's layers tutorial): 5x5 conv 32 -> pool -> 5x5 conv 64 -> pool -> dense 1024
  -> dropout 0.4 -> softmax. The tutorial trains 20,000 SGD steps at batch 100 (36 epochs); here Adam.
- tf_2conv_pool_bn (0.934): the same with BatchNorm after each conv (the source notebook's placement is not
  stated in the table; chosen: conv -> BN -> ReLU -> pool).
- keras_3conv_pool_2fc_dropout (0.926): 3x3 convs 32, 64, 128, each pooled, -> dense 128 -> dropout 0.3 ->
  softmax (chosen: dropout on the dense layer only, where the Keras model also drops after its convs).
- mlp_256_128_100 (0.8833): dense 256 -> 128 -> 100 -> softmax, ReLU, no dropout.
Measured results: docs/studies.md, Fashion-MNIST reproduction.
"""

import ml_collections

from experiments import fashion_mnist

EPOCH = fashion_mnist.EPOCH


def get_config() -> ml_collections.ConfigDict:
  config = fashion_mnist.get_config()
  config.model.norm = 'none'
  config.seeds = 3
  config.lr_grid = (1e-3, 3e-3, 1e-2)
  config.lr_pick = 'point'
  config.num_train_steps = 15 * EPOCH
  config.test_checkpoint = 'best_val'  # the epochs: the end-of-epoch checkpoint with the best validation accuracy
  return config


def get_sweep() -> list[dict]:
  tf = {'model.features': (32, 64), 'model.kernel_size': 5, 'model.dense': (1024,), 'model.dropout': 0.4}
  return [{'name': 'tf_2conv_pool', **tf},
          {'name': 'tf_2conv_pool_bn', **tf, 'model.norm': 'batch'},
          {'name': 'keras_3conv_pool_2fc_dropout', 'model.features': (32, 64, 128), 'model.dense': (128,),
           'model.dropout': 0.3},
          {'name': 'mlp_256_128_100', 'model.variant': 'mlp', 'model.features': (), 'model.dense': (256, 128, 100),
           'model.dropout': 0.0}]
