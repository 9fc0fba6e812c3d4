"""`shapes`: procedurally generated geometric shapes, a TFDS builder that needs no download.

Each image holds one shape (square, circle, triangle, cross, diamond or ring) of random size, position and
colour on a random background, with mild pixel noise. Example i of a split is drawn from
``np.random.default_rng([seed, split, i])``, so the dataset is identical on every machine. Besides the class
label it records the shape's size and centre (fractions of the image side) as regression targets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cnnjax.datasets import png

CLASSES = ('square', 'circle', 'triangle', 'cross', 'diamond', 'ring')
SPLITS = ('train', 'test')
MIN_SIZE, MAX_SIZE = 8, 224


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Image side and split sizes; the config name is the image side, e.g. `shapes/64`."""
  image_size: int = 32
  num_train: int = 10_000
  num_test: int = 2_000
  seed: int = 0


def shapes_config(image_size: int) -> ShapesConfig:
  """The config for images of side ``image_size`` (8..224); large images get fewer examples."""
  if not MIN_SIZE <= image_size <= MAX_SIZE:
    raise ValueError(f'shapes image size must be in [{MIN_SIZE}, {MAX_SIZE}], got {image_size}')
  scale = 1 if image_size <= 64 else 4
  return ShapesConfig(name=str(image_size), description=f'{image_size}x{image_size} RGB shapes',
                      image_size=image_size, num_train=10_000 // scale, num_test=2_000 // scale)


def builder_config(image_size: int) -> str | ShapesConfig:
  """What ``tfds.builder('shapes', config=...)`` takes for images of side ``image_size``: the name of a
  registered config, or a new one."""
  return str(image_size) if str(image_size) in Shapes.builder_configs else shapes_config(image_size)


def _mask(label: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
  """Pixels covered by shape ``label`` of half-extent r, at offsets (dy, dx) from its centre."""
  name = CLASSES[label]
  if name == 'square':
    return (np.abs(dx) <= r) & (np.abs(dy) <= r)
  if name == 'circle':
    return dx**2 + dy**2 <= r**2
  if name == 'triangle':  # apex up: half-width grows linearly from 0 at the top to r at the bottom
    return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)
  if name == 'cross':
    arm = r / 3
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
  if name == 'diamond':
    return np.abs(dx) + np.abs(dy) <= r
  return (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2)  # ring


def draw_example(rng: np.random.Generator, size: int) -> dict[str, np.ndarray | int]:
  """One random example: image [size, size, 3] uint8, label, size and centre."""
  label = int(rng.integers(len(CLASSES)))
  r = rng.uniform(0.15, 0.35) * size
  cy, cx = rng.uniform(r, size - r, 2)
  background = rng.uniform(0, 255, 3)
  foreground = (background + rng.uniform(90, 165, 3) * rng.choice([-1, 1], 3)) % 256
  yy, xx = np.mgrid[:size, :size] + 0.5
  inside = _mask(label, yy - cy, xx - cx, r)[..., None]
  image = np.where(inside, foreground, background) + rng.normal(0, 8, (size, size, 3))
  return {'image': np.clip(image, 0, 255).astype(np.uint8), 'label': label,
          'size': np.float32(r / size), 'center': np.array([cy / size, cx / size], np.float32)}


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Geometric shapes at random position, size and colour; offline and deterministic."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [shapes_config(s) for s in (16, 32, 64, 128, 224)]
  DEFAULT_CONFIG_NAME = '32'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3)),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'size': tfds.features.Scalar(np.float32, doc='half-extent of the shape / image side'),
            'center': tfds.features.Tensor(shape=(2,), dtype=np.float32, doc='(y, x) centre / image side'),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    for i in range(num_examples):
      example = draw_example(np.random.default_rng([cfg.seed, SPLITS.index(split), i]), cfg.image_size)
      yield i, {**example, 'image': png.encode(example['image'])}
