"""augment: normalisation, flips, pad-and-crop and random erasing against their closed forms; both pipelines' steps
augment each example from (data key, stream position)."""

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import augment, steps, train


def test_normalisation_and_flips():
  image = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 4, 3), np.uint8))
  plain = augment.Preprocess((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
  want = (np.asarray(image, np.float32) / 255 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0]
  np.testing.assert_allclose(plain.normalize(image), want, rtol=1e-6)
  flip = augment.Preprocess((0.1, 0.2, 0.3), (0.5, 0.25, 2.0), flip=True)
  outs = [np.asarray(flip.augment(image, jax.random.key(k))) for k in range(200)]
  flipped = [np.allclose(o, want[:, ::-1], rtol=1e-6) for o in outs]
  assert all(f or np.allclose(o, want, rtol=1e-6) for f, o in zip(flipped, outs, strict=True))
  assert 70 <= sum(flipped) <= 130  # Binomial(200, 0.5): mean 100, sd 7


def test_pad_and_crop_is_a_window_of_the_reflect_padded_image():
  image = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode='reflect')  # numpy's reflect: the edge not repeated
  offsets = set()
  for k in range(300):
    key = jax.random.key(k)
    out = np.asarray(augment.pad_and_crop(jnp.asarray(image), 2, key))
    dy, dx = (int(v) for v in jax.random.randint(key, (2,), 0, 5))
    np.testing.assert_array_equal(out, padded[dy:dy + 5, dx:dx + 6])
    offsets.add((dy, dx))
  assert offsets == {(y, x) for y in range(5) for x in range(5)}  # every offset in [0, 2 * pad] occurs


def test_random_erasing_zeroes_one_rectangle_of_the_stated_size():
  """p=1: one axis-aligned rectangle (all channels) of 2-40 % of the area (up to rounding of the sides); p=0.5
  about half of 400 images; p=0 none."""
  ones = jnp.ones((28, 28, 2))
  for i in range(50):
    erased = np.asarray(augment.random_erasing(ones, 1.0, jax.random.key(i)))
    zero = erased[:, :, 0] == 0
    np.testing.assert_array_equal(zero, erased[:, :, 1] == 0)
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert zero.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)  # a box
    assert 0.02 * 784 * 0.7 <= zero.sum() <= 0.4 * 784 * 1.3, zero.sum()
  count = sum(bool((np.asarray(augment.random_erasing(ones, 0.5, jax.random.key(1000 + i))) == 0).any())
              for i in range(400))
  assert 160 <= count <= 240  # Binomial(400, 0.5): mean 200, sd 10
  np.testing.assert_array_equal(augment.random_erasing(ones, 0.0, jax.random.key(0)), ones)


def test_the_host_pipelines_step_augments_each_example_from_its_stream_position(config, data_dir):
  """The host pipeline hands the step raw uint8 images with their positions (0..B-1 at step 0, B.. at step 1);
  the step augments example i from fold_in(data key, position i), as the device pipeline's steps do (threefry
  keys: their draws under vmap are each key's own, so each example can be checked alone)."""
  config.data.pipeline, config.data.augment_flip, config.data.augment_crop = 'host', True, True
  config.rng_impl = 'threefry2x32'
  run = train.setup(config, data_dir)
  first, second = (run.pipeline.batch(step, rows=(1, 0, 1)) for step in range(2))
  assert first['image'].dtype == np.uint8 and first['image'].shape == (1, config.batch_size, 32, 32, 3)
  np.testing.assert_array_equal(first['position'][0], np.arange(config.batch_size))
  np.testing.assert_array_equal(second['position'][0], np.arange(config.batch_size, 2 * config.batch_size))
  wrapped = run.pipeline.train_step(lambda state, batch, rng: batch)
  got = np.asarray(wrapped(None, jax.tree.map(lambda x: x[0], first), None)['image'])
  _, preprocess = augment.preprocessing(config.data, run.spec)
  key = steps.data_key(config)
  flips = 0
  for i, (image, position) in enumerate(zip(first['image'][0], first['position'][0], strict=True)):
    want = preprocess.augment(jnp.asarray(image), jax.random.fold_in(key, position))
    np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)
    plain = augment.Preprocess(preprocess.mean, preprocess.std, crop_padding=4)
    flips += not np.allclose(plain.augment(jnp.asarray(image), jax.random.fold_in(key, position)), want)
  assert 0 < flips < config.batch_size  # some examples flipped, some not
