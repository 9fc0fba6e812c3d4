"""`digits`: scikit-learn's bundled 8x8 handwritten digits (UCI), as a TFDS builder that needs no download.

1,797 grey-scale images with values 0..16, rescaled to 0..255. The train/test split (1,437 / 360) is a
fixed permutation with seed 0, stratified by nothing but chance, and the same on every machine.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from cnnjax.datasets import png

NUM_TEST = 360


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, shipped inside the scikit-learn package."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the data ships with scikit-learn
    order = np.random.default_rng(0).permutation(1797)
    return {'train': self._generate_examples(order[NUM_TEST:]), 'test': self._generate_examples(order[:NUM_TEST])}

  def _generate_examples(self, indices: np.ndarray):
    from sklearn.datasets import load_digits  # imported here: only generation needs scikit-learn
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    for i in indices:
      yield int(i), {'image': png.encode(images[i]), 'label': int(digits.target[i])}
