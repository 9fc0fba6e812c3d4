"""A user's own data: image folders and NumPy files prepared into arrays (counts, classes, statistics against
numpy, the held-out split), reused until the source changes, resumed after an interruption, and every bad input
refused in one line or skipped and counted."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnjax import arrays, data, errors, preparation, sources, train
from cnnjax.config import apply_overrides
from cnnjax.datasets import pets_folder


@pytest.fixture(scope='module')
def pets(tmp_path_factory):
  """10 photo-like images per class and the 4 bad files of pets_folder."""
  root = tmp_path_factory.mktemp('pets')
  pets_folder.write(str(root), per_class=10)
  return root


def _folder_config(config, path, **overrides):
  return apply_overrides(config, {'data.name': f'folder:{path}', 'data.image_size': 16, 'head': 'multiclass',
                                  'batch_size': 8, 'eval_batch_size': 8, 'num_train_steps': 4, 'eval_every_steps': 4,
                                  'checkpoint_every_steps': 4, 'data.val_fraction': 0.25, **overrides})


def _prepared(config, data_dir):
  directory = arrays.location(config.data, data_dir)
  return directory, arrays.find(directory)


def test_a_folder_is_prepared_into_arrays_with_its_classes_and_statistics(config, pets, tmp_path, caplog):
  config = _folder_config(config, pets)
  with caplog.at_level(logging.INFO):
    run = train.setup(config, str(tmp_path))
  directory, info = _prepared(config, str(tmp_path))
  assert info.classes == ('cat', 'dog') and info.features['label'].num_classes == 2
  assert sum(info.num_examples.values()) == 20  # the 4 bad files skipped
  assert 'Skipped 4 file(s)' in caplog.text and 'cat/cat.notes.jpg (not an image)' in caplog.text
  assert 'were smaller than 16 pixels' not in caplog.text  # 40x30 images are not below 16
  assert 'held out for testing' in caplog.text
  test_labels = np.load(os.path.join(directory, 'test.label.npy'))
  assert sorted(test_labels.tolist()) == [0, 0, 1, 1]  # round(0.2 x 10) of each class... less the bad files' share
  train_images = np.load(os.path.join(directory, 'train.image.npy'))
  assert train_images.shape == (16, 16, 16, 3) and train_images.dtype == np.uint8
  pixels = train_images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(info.mean, pixels.mean(0), atol=1e-6)
  np.testing.assert_allclose(info.std, pixels.std(0), atol=1e-6)
  assert run.spec.mean == info.mean and run.spec.std == info.std  # what the steps normalise with
  assert run.pipeline.name == 'host' and run.info.image_shape == (16, 16, 3)  # the fixture's pipeline


def test_a_folder_trains_end_to_end_and_is_reused_until_it_changes(config, pets, tmp_path, caplog):
  folder = tmp_path / 'pets'
  shutil.copytree(pets, folder)
  config = _folder_config(config, folder, **{'data.pipeline': 'host'})
  result = train.train_and_evaluate(config, str(tmp_path / 'run'), str(tmp_path / 'data'))
  assert np.isfinite(result.metrics['test_loss']) and result.run.pipeline.name == 'host'
  with caplog.at_level(logging.INFO):
    train.setup(config, str(tmp_path / 'data'))
  assert 'Preparing' not in caplog.text  # unchanged: reused
  Image.new('RGB', (50, 40), (200, 100, 50)).save(folder / 'dog' / 'dog.new.jpg')
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.setup(config, str(tmp_path / 'data'))
  assert 'changed since it was prepared' in caplog.text
  assert sum(_prepared(config, str(tmp_path / 'data'))[1].num_examples.values()) == 21


def test_train_and_test_folders_and_grayscale(config, tmp_path):
  for split, count in (('train', 6), ('test', 2)):
    for c, colour in (('a', 30), ('b', 220)):
      os.makedirs(tmp_path / 'src' / split / c)
      for i in range(count):
        Image.new('RGB', (20 + i, 18), (colour, colour, colour)).save(tmp_path / 'src' / split / c / f'{i}.png')
  config = _folder_config(config, tmp_path / 'src', **{'data.grayscale': True})
  run = train.setup(config, str(tmp_path / 'data'))
  _, info = _prepared(config, str(tmp_path / 'data'))
  assert info.num_examples == {'train': 12, 'test': 4} and run.info.image_shape == (16, 16, 1)
  assert info.mean[0] == pytest.approx((30 + 220) / 2 / 255, abs=0.01)


def test_an_interrupted_preparation_resumes_where_it_stopped(pets, tmp_path, monkeypatch):
  listing = sources.list_folder(str(pets))
  monkeypatch.setattr(preparation, 'CHUNK', 4)
  calls, real = [], preparation.images.decode

  def dying(path, size, grayscale=False):
    calls.append(path)
    if len(calls) == 6:
      raise KeyboardInterrupt  # the user stops it in its second chunk
    return real(path, size, grayscale)
  monkeypatch.setattr(preparation.images, 'decode', dying)
  with pytest.raises(KeyboardInterrupt):
    preparation.prepare(listing, str(tmp_path / 'arrays'), 16, False)
  progress = json.loads((tmp_path / 'arrays.partial' / 'progress.json').read_text())
  assert progress['done']['train'] == 4 and not (tmp_path / 'arrays').exists()
  monkeypatch.setattr(preparation.images, 'decode', real)
  preparation.prepare(listing, str(tmp_path / 'arrays'), 16, False)
  fresh = tmp_path / 'fresh'
  preparation.prepare(listing, str(fresh), 16, False)
  for name in ('train.image.npy', 'train.label.npy', 'test.image.npy'):
    np.testing.assert_array_equal(np.load(tmp_path / 'arrays' / name), np.load(fresh / name))
  assert not (tmp_path / 'arrays.partial').exists()


@pytest.mark.parametrize('layout,message', [
    ({'cat': 2}, 'holds 1 class folder: cat; a classifier needs one folder per class'),
    ({'cat': 2, 'dog': 0}, 'the class folder dog in'),
    ({'train/cat': 1, 'train/dog': 1, 'test/cat': 1, 'test/cow': 1}, "only in train: ['dog']; only in test: ['cow']"),
])
def test_bad_folders_are_refused_in_one_line_before_anything_is_written(config, tmp_path, layout, message):
  for directory, count in layout.items():
    os.makedirs(tmp_path / 'src' / directory)
    for i in range(count):
      Image.new('RGB', (8, 8)).save(tmp_path / 'src' / directory / f'{i}.png')
  with pytest.raises(errors.DataError, match=message.replace('[', r'\[').replace(']', r'\]')):
    train.setup(_folder_config(config, tmp_path / 'src'), str(tmp_path / 'data'))
  assert not (tmp_path / 'data').exists()


def test_a_path_that_is_not_there_is_named_with_the_flag(config, tmp_path):
  with pytest.raises(errors.DataError, match=r'--config.data.name=folder:.*/missing: .* is not a directory'):
    train.setup(_folder_config(config, tmp_path / 'missing'), str(tmp_path / 'data'))
  assert not (tmp_path / 'data').exists()
  with pytest.raises(errors.DataError, match=r'is not a file; point it at an .npz file'):
    data.validate(apply_overrides(config, {'data.name': f'npz:{tmp_path}/x.npz'}).data)


def _npz(tmp_path, **arrays_):
  path = tmp_path / 'data.npz'
  np.savez(path, **arrays_)
  return path


def test_npz_files_in_each_layout_and_dtype(config, tmp_path):
  rng = np.random.default_rng(0)
  chw = rng.uniform(0, 1, (30, 3, 12, 12)).astype(np.float32)  # [N, C, H, W] floats in [0, 1]
  path = _npz(tmp_path, x_train=chw, y_train=np.arange(30) % 3, x_test=chw[:6], y_test=np.arange(6) % 3)
  config = apply_overrides(config, {'data.name': f'npz:{path}', 'batch_size': 8, 'eval_batch_size': 8,
                                    'data.val_fraction': 0.2})
  run = train.setup(config, str(tmp_path / 'data'))
  directory, info = _prepared(config, str(tmp_path / 'data'))
  assert run.info.image_shape == (12, 12, 3) and info.features['label'].num_classes == 3
  stored = np.load(os.path.join(directory, 'train.image.npy'))
  np.testing.assert_array_equal(stored, np.round(np.moveaxis(chw, 1, -1) * 255).astype(np.uint8))
  gray = _npz(tmp_path, x_train=np.zeros((10, 8, 8), np.uint8), y_train=np.arange(10) % 2,
              x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.arange(4) % 2)
  assert data.get_spec(apply_overrides(config, {'data.name': f'npz:{gray}'}).data).channels == 1


@pytest.mark.parametrize('arrays_,message', [
    ({'x_train': np.zeros((4, 8, 8)), 'y_train': np.zeros(4)}, 'has no x_test, y_test'),
    ({'x_train': np.zeros((4, 3, 8, 3)), 'y_train': np.zeros(4), 'x_test': np.zeros((1, 3, 8, 3)),
      'y_test': np.zeros(1)}, 'could be the last axis or the second'),
    ({'x_train': np.zeros((4, 8, 8)), 'y_train': np.zeros(3), 'x_test': np.zeros((1, 8, 8)), 'y_test': np.zeros(1)},
     r'y_train in .* holds \(3,\) labels for 4 images'),
    ({'x_train': np.zeros((4, 8, 8)), 'y_train': np.array([0, 1, -1, 2]), 'x_test': np.zeros((1, 8, 8)),
      'y_test': np.zeros(1)}, 'labels that are not class indices'),
])
def test_bad_npz_files_are_refused_in_one_line(config, tmp_path, arrays_, message):
  path = _npz(tmp_path, **arrays_)
  config = apply_overrides(config, {'data.name': f'npz:{path}', 'batch_size': 8})
  with pytest.raises(errors.DataError, match=message):
    train.setup(config, str(tmp_path / 'data'))
  assert not list(tmp_path.glob(f'data/{arrays.ARRAYS_DIR}/*/info.json'))  # nothing prepared


def test_a_tfds_dataset_of_varying_sizes_is_fitted_and_its_test_split_held_out(config, tmp_path, mock_dataset):
  import io

  import tensorflow_datasets as tfds
  from PIL import ImageOps
  config = apply_overrides(config, {'data.name': 'cats_vs_dogs', 'data.image_size': 16, 'batch_size': 8,
                                    'eval_batch_size': 8, 'data.val_fraction': 0.25})
  with mock_dataset('cats_vs_dogs', 40, splits=('train',)):  # its one split, of random sizes
    run = train.setup(config, str(tmp_path / 'data'))
    source = tfds.builder('cats_vs_dogs', data_dir=str(tmp_path / 'data')).as_data_source(
        'train', decoders={'image': tfds.decode.SkipDecoding()})
    examples = [source[i] for i in range(40)]
  directory, info = _prepared(config, str(tmp_path / 'data'))
  labels = np.array([e['label'] for e in examples])
  held = sum(max(1, round(0.2 * np.sum(labels == c))) for c in np.unique(labels))  # stratified, each class
  assert info.num_examples == {'train': 40 - held, 'test': held} and info.classes == ('cat', 'dog')
  train_labels = np.load(os.path.join(directory, 'train.label.npy'))
  test_labels = np.load(os.path.join(directory, 'test.label.npy'))
  assert sorted([*train_labels, *test_labels]) == sorted(labels)
  train_images = np.load(os.path.join(directory, 'train.image.npy'))
  kept = [i for i in range(40) if i not in set(preparation.carve({'train': labels}, False)['test'][1])]
  for row, i in ((0, kept[0]), (-1, kept[-1])):  # TFDS's order kept; each image fitted as pillow fits it
    with Image.open(io.BytesIO(examples[i]['image'])) as image:
      want = np.asarray(ImageOps.fit(image.convert('RGB'), (16, 16), method=Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(train_images[row], want)
  np.testing.assert_allclose(info.mean, (train_images.reshape(-1, 3) / 255.0).mean(0), atol=1e-6)
  assert run.spec.mean == info.mean and run.info.image_shape == (16, 16, 3)  # measured, not ImageNet's


def test_a_tfds_name_trains_and_holds_the_built_in_datasets_examples(config, data_dir, tmp_path):
  """tfds:digits (TFDS's records decoded by pillow, with tf.data reading tfrecord files) holds exactly the
  examples of the built-in digits arrays (decoded by TFDS), in the same order."""
  config = apply_overrides(config, {'data.name': 'tfds:digits', 'batch_size': 16, 'eval_batch_size': 16})
  result = train.train_and_evaluate(config, str(tmp_path / 'run'), data_dir)
  assert np.isfinite(result.metrics['test_loss']) and result.run.info.image_shape == (8, 8, 1)
  directory, info = _prepared(config, data_dir)
  assert info.source['kind'] == 'tfds' and info.classes == tuple(str(c) for c in range(10))
  built_in = apply_overrides(config, {'data.name': 'digits'})
  train.setup(built_in, data_dir)
  for split in ('train', 'test'):
    got, want = arrays.load(directory, split), arrays.load(arrays.location(built_in.data, data_dir), split)
    for feature in ('image', 'label'):
      np.testing.assert_array_equal(got[feature], want[feature])


@pytest.mark.parametrize('name,message', [
    ('tfds:no_such_dataset', "TFDS has no dataset 'no_such_dataset'"),
    ('tfds:wine_quality', 'cnnjax trains on TFDS datasets with an image feature "image" and a class label "label"'),
])
def test_a_tfds_name_that_cannot_serve_is_refused_in_one_line(config, name, message):
  with pytest.raises(errors.DataError, match=message):
    data.validate(apply_overrides(config, {'data.name': name}).data)
