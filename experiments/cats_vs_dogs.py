r"""Cats vs dogs at 224x224 from an image folder: a conv-ReLU-maxpool stack whose resolution halves block by block
(224 -> 112 -> 56 -> 28 -> 14 -> 7), then a dense layer and a sigmoid/BCE head.

  python -m cnnjax.datasets.pets_folder --out=/tmp/cnnjax/pets --per_class=500   # photo-like stand-ins
  python launch.py --experiment=cats_vs_dogs --workdir=/tmp/cnnjax/cats_vs_dogs
  python launch.py --experiment=cats_vs_dogs --workdir=DIR --config.data.name=folder:PetImages  # Kaggle's Cat/, Dog/
  python launch.py --workdir=/tmp/cnnjax/cats_vs_dogs --predict=photo.jpg

The folder holds a subfolder per class (Kaggle's PetImages/Cat and PetImages/Dog, with its unreadable files,
which preparation skips and counts); each image's short side is scaled to 224 and its centre cropped, once, into
--data_dir. Without a test folder, 20 % of each class is held out (seeded). `--analyze` prints the resolutions.
What it shows on the generated folder: results/experiments/cats_vs_dogs_generated.json (its run records,
no checkpoints: results/runs/cats_vs_dogs_generated/).
"""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.data.name = 'folder:/tmp/cnnjax/pets'
  config.data.image_size = 224
  config.data.augment_flip = True
  config.data.val_fraction = 0.1
  config.head = 'binary'
  config.model.features = (16, 32, 64, 64, 128)  # each block halves the side: 224 -> 7
  config.model.dense = (128,)
  config.model.dropout = 0.3
  config.batch_size = 32
  config.eval_batch_size = 64
  config.optimizer.learning_rate = 1e-3
  config.num_train_steps = 600
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  config.log_every_steps = 20
  return config
