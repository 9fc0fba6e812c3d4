"""Data cnnjax does not generate: an image folder (``--config.data.name=folder:PATH``), a NumPy file
(``npz:PATH``) or any TFDS image-classification dataset (``tfds:NAME``, and the built-in ``cats_vs_dogs``),
prepared once into cnnjax's arrays (``arrays.py``'s format: uint8 images, labels, info.json with the classes and
the training split's per-channel mean and std, sealed), which both pipelines read.

A folder holds one subdirectory per class (``PATH/cat/*.jpg``), or ``PATH/train/<class>/`` and
``PATH/test/<class>/``. A TFDS dataset is prepared by TFDS as the built-in ones are, then its records' encoded
images are decoded like a folder's files (``preparation``): without a test split, a seeded, stratified share of
each class is held out. The arrays record the source's fingerprint (a folder's files' sizes and modification
times; an npz file's; a TFDS dataset's name, config and version), and a source that changed is prepared anew.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from cnnjax import files, images, preparation
from cnnjax.errors import DataError

KINDS = ('folder', 'npz', 'tfds')


def kind(name: str) -> str | None:
  """'folder', 'npz' or 'tfds' for a ``folder:PATH``, ``npz:PATH`` or ``tfds:NAME`` name, else None (a built-in
  dataset)."""
  if not isinstance(name, str):
    return None  # not a name at all: the look-up of the built-in datasets refuses it
  prefix, sep, _ = name.partition(':')
  return prefix if sep and prefix in KINDS else None


def path_of(name: str) -> str:
  return os.path.abspath(os.path.expanduser(name.partition(':')[2]))


def check_path(name: str) -> str:
  """The source's path, after checking it exists and can be read.

  Raises:
    DataError naming the flag, the path and what is wrong.
  """
  path, what = path_of(name), kind(name)
  exists = os.path.isdir(path) if what == 'folder' else os.path.isfile(path)
  if not exists:
    raise DataError(f'--config.data.name={name}: {path} is not {"a directory" if what == "folder" else "a file"}; '
                    f'point it at {"a folder of class folders" if what == "folder" else "an .npz file"}')
  if not os.access(path, os.R_OK | (os.X_OK if what == 'folder' else 0)):
    raise DataError(f'--config.data.name={name}: {path} cannot be read (permissions); make it readable')
  return path


# ---------------------------------------------------------------------------------------------------------
# Image folders.

def _class_dirs(root: str) -> dict[str, str]:
  return {e.name: e.path for e in sorted(os.scandir(root), key=lambda e: e.name)
          if e.is_dir() and not e.name.startswith('.')}


def _files_of(directory: str) -> list[str]:
  """The regular files below ``directory`` (hidden ones left out), sorted."""
  found = []
  for parent, dirs, names in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found += [os.path.join(parent, n) for n in sorted(names) if not n.startswith('.')]
  return found


def folder_layout(root: str) -> dict[str, dict[str, list[str]]]:
  """split ('train', and 'test' where PATH/test exists) -> class -> files.

  Raises:
    DataError for no class folders, one class, an empty class folder, or train and test classes that differ.
  """
  tops = _class_dirs(root)
  split_dirs = {'train': tops['train'], 'test': tops['test']} if {'train', 'test'} <= set(tops) else {'train': root}
  layout = {split: {c: _files_of(d) for c, d in _class_dirs(directory).items()}
            for split, directory in split_dirs.items()}
  for split, classes in layout.items():
    where = os.path.relpath(split_dirs[split], root) if split_dirs[split] != root else root
    if len(classes) < 2:
      raise DataError(f'{where} holds {len(classes)} class folder{"s" * (len(classes) != 1)}'
                      f'{": " + next(iter(classes)) if classes else ""}; a classifier needs one folder per class, '
                      'two or more (PATH/cat/*.jpg, PATH/dog/*.jpg)')
    empty = [c for c, found in classes.items() if not found]
    if empty:
      raise DataError(f'the class folder{"s" * (len(empty) > 1)} {", ".join(empty)} in {where} '
                      f'{"are" if len(empty) > 1 else "is"} empty; add images or remove '
                      f'{"them" if len(empty) > 1 else "it"}')
  if 'test' in layout and set(layout['train']) != set(layout['test']):
    only_train, only_test = sorted(set(layout['train']) - set(layout['test'])), sorted(set(layout['test']) - set(
        layout['train']))
    raise DataError(f'the class folders of {root}/train and {root}/test differ (only in train: {only_train or "-"}; '
                    f'only in test: {only_test or "-"}); give both the same classes')
  return layout


def fingerprint(paths: Sequence[str]) -> str:
  """sha256 of each file's path, size and modification time: a changed, added or removed file changes it (their
  contents are not read)."""
  digest = hashlib.sha256()
  for path in paths:
    stat = os.stat(path)
    digest.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:16]


def list_folder(root: str, name: str | None = None) -> preparation.Listing:
  """The folder's examples: its classes (sorted folder names) and per split its files, class by class (the
  training order is shuffled once when the arrays are written, ``preparation.carve``)."""
  layout = folder_layout(root)
  classes = tuple(layout['train'])
  pairs = {split: [(f, classes.index(c)) for c, found in by_class.items() for f in found]
           for split, by_class in layout.items()}
  return preparation.Listing(
      name or f'folder:{root}', classes, {split: len(found) for split, found in pairs.items()},
      read=lambda split, start, stop: pairs[split][start:stop],
      describe=lambda split, i: os.path.relpath(pairs[split][i][0], root),
      record={'kind': 'folder', 'path': root, 'fingerprint': fingerprint([f for p in pairs.values() for f, _ in p]),
              'compared': 'each file\'s path, size and modification time'})


# ---------------------------------------------------------------------------------------------------------
# TFDS image-classification datasets.

def tfds_name(name: str) -> str:
  """The TFDS name of ``tfds:NAME`` (or of a built-in dataset's name, which is its TFDS name)."""
  return name.partition(':')[2] if kind(name) == 'tfds' else name


@functools.lru_cache(maxsize=16)
def tfds_features(name: str) -> tuple[int, int, int]:
  """(image side, 0 where sizes vary; channels; classes) of a TFDS dataset, from its builder's features, without
  preparing it.

  Raises:
    DataError for a name TFDS does not know, or a dataset without an ``image`` and a class ``label``.
  """
  import tensorflow_datasets as tfds

  import cnnjax.datasets  # noqa: F401 - registers cnnjax's offline builders with tfds
  try:
    features = tfds.builder(tfds_name(name)).info.features
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'--config.data.name={name}: TFDS has no dataset {tfds_name(name)!r}; see '
                    'https://www.tensorflow.org/datasets/catalog or tfds.list_builders()') from None
  image, label = (features[k] if k in features else None for k in ('image', 'label'))
  if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
    raise DataError(f'--config.data.name={name}: cnnjax trains on TFDS datasets with an image feature "image" and a '
                    f'class label "label"; {tfds_name(name)} has {", ".join(sorted(features.keys()))}')
  height, width, channels = image.shape
  return height if height and height == width else 0, channels or 3, label.num_classes


def tfds_listing(name: str, builder: Any) -> preparation.Listing:
  """The examples of a prepared TFDS dataset (``builder``): its 'train' split and its 'test' split where it has
  one, read as encoded images (TFDS's records hold them encoded), through TFDS's random-access data source
  (array_record files) or through tf.data (tfrecord files, in slices)."""
  import tensorflow_datasets as tfds

  split_names = [s for s in ('train', 'test') if s in builder.info.splits]
  if 'train' not in split_names:
    raise DataError(f'--config.data.name={name}: {builder.name} has no train split (it has '
                    f'{", ".join(builder.info.splits)}); cnnjax trains on a dataset\'s train split')
  skip = {'image': tfds.decode.SkipDecoding()}
  if builder.info.file_format.value == 'array_record':
    source = {s: builder.as_data_source(s, decoders=skip) for s in split_names}

    def read(split: str, start: int, stop: int) -> list[tuple[bytes, int]]:
      return [(e['image'], e['label']) for e in map(source[split].__getitem__, range(start, stop))]
  else:
    def read(split: str, start: int, stop: int) -> list[tuple[bytes, int]]:
      ds = builder.as_dataset(split=f'{split}[{start}:{stop}]', decoders=skip, shuffle_files=False,
                              read_config=tfds.ReadConfig(add_tfds_id=False))
      return [(e['image'], e['label']) for e in tfds.as_numpy(ds)]
  return preparation.Listing(
      name, tuple(builder.info.features['label'].names), {s: builder.info.splits[s].num_examples for s in split_names},
      read=read, describe=lambda split, i: f'{builder.name} {split}[{i}]',
      record={'kind': 'tfds', 'name': builder.info.full_name, 'fingerprint': builder.info.full_name,
              'compared': 'the TFDS dataset\'s name, config and version'},
      shuffle=False)


# ---------------------------------------------------------------------------------------------------------
# NumPy files.

NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')


def npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Each array's (shape, dtype) in the .npz file, read from the headers only, once per version of the file
  (the dataset's spec asks for them at every look-up).

  Raises:
    DataError for a file that is not an .npz archive or lacks one of NPZ_KEYS.
  """
  stat = os.stat(path)
  return _npz_headers(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _npz_headers(path: str, size: int, mtime_ns: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """``npz_headers`` of ``path`` as it is at (``size``, ``mtime_ns``), which key the cache."""
  del size, mtime_ns
  import zipfile
  try:
    with zipfile.ZipFile(path) as archive:
      shapes = {}
      for member in archive.namelist():
        with archive.open(member) as f:
          version = np.lib.format.read_magic(f)
          read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
          shape, _, dtype = read(f)
        shapes[member.removesuffix('.npy')] = (shape, dtype)
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise DataError(f'{path} is not a NumPy .npz file ({e}); save one with np.savez(path, x_train=..., '
                    'y_train=..., x_test=..., y_test=...)') from None
  missing = [k for k in NPZ_KEYS if k not in shapes]
  if missing:
    raise DataError(f'{path} has no {", ".join(missing)} (it has {", ".join(sorted(shapes)) or "nothing"}); '
                    f'cnnjax reads {", ".join(NPZ_KEYS)}, the layout of the Keras datasets')
  return shapes


def npz_layout(shape: tuple[int, ...], path: str) -> str:
  """'HW', 'HWC' or 'CHW' of image arrays shaped [N, ...] ``shape``.

  Raises:
    DataError for a shape that is none of them, or could be either HWC or CHW.
  """
  if len(shape) == 3:
    return 'HW'
  channel_last, channel_first = len(shape) == 4 and shape[3] in (1, 3, 4), len(shape) == 4 and shape[1] in (1, 3)
  if channel_last and channel_first:
    raise DataError(f'x_train in {path} is shaped {shape}: its channels could be the last axis or the second; save '
                    'the images as [N, H, W, C]')
  if channel_last or channel_first:
    return 'HWC' if channel_last else 'CHW'
  raise DataError(f'x_train in {path} is shaped {shape}; cnnjax reads [N, H, W], [N, H, W, C] or [N, C, H, W] '
                  'with 1 or 3 channels (4: RGBA)')


def _npz_images(x: np.ndarray, layout: str, path: str) -> tuple[np.ndarray, list[str]]:
  """Images as uint8 [N, H, W, C] (C 1 or 3), and what was done to them, said in the log."""
  said = []
  if layout == 'HW':
    x = x[..., None]
  elif layout == 'CHW':
    x, said = np.moveaxis(x, 1, -1), ['channels moved last ([N, C, H, W] read)']
  if x.shape[-1] == 4:
    x, said = x[..., :3], [*said, 'the alpha channel dropped']
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.number):
      raise DataError(f'x_train and x_test in {path} are {x.dtype}; save images as uint8 or floats')
    high = float(np.max(x)) if x.size else 0.0
    scale = 255.0 if high <= 1.0 else 1.0
    said.append(f'{x.dtype} values scaled from [0, 1] to [0, 255]' if scale == 255.0
                else f'{x.dtype} values read as 0..255 (clipped and rounded)')
    x = np.clip(np.round(np.asarray(x, np.float64) * scale), 0, 255).astype(np.uint8)
  return x, said


def _npz_labels(y: np.ndarray, count: int, key: str, path: str) -> np.ndarray:
  """Integer class labels [N].

  Raises:
    DataError for labels that are not whole numbers >= 0, or not one per image.
  """
  y = np.asarray(y).reshape(len(y), -1)[:, 0] if np.ndim(y) == 2 and np.shape(y)[1] == 1 else np.asarray(y)
  if y.ndim != 1 or len(y) != count:
    raise DataError(f'{key} in {path} holds {np.shape(y)} labels for {count} images; give one class index per image')
  if not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)) or (len(y) and y.min() < 0):
    raise DataError(f'{key} in {path} holds labels that are not class indices 0, 1, 2, ... (e.g. {y[:3].tolist()}); '
                    'give integers from 0')
  return y.astype(np.int32)


def prepare_npz(name: str, directory: str, size: int) -> None:
  """Reads the .npz file's x_train, y_train, x_test, y_test into ``directory`` (arrays.py's format); images
  whose side is not ``size`` are fitted to it like a folder's."""
  path = path_of(name)
  shapes = npz_headers(path)
  layout = npz_layout(shapes['x_train'][0], path)
  out = f'{directory}.tmp-{os.getpid()}'
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  counts, labels, histograms = {}, {}, None
  with np.load(path) as archive:
    for split in ('train', 'test'):
      x, said = _npz_images(archive[f'x_{split}'], layout, path)
      labels[split] = _npz_labels(archive[f'y_{split}'], len(x), f'y_{split}', path)
      if x.shape[1:3] != (size, size):
        x = np.stack([images.fit(_to_pil(image), size, x.shape[-1] == 1)[0] for image in x])
        said.append(f'fitted to {size}x{size}')
      if said and split == 'train':
        logging.info('%s: %s.', name, '; '.join(said))
      np.save(os.path.join(out, f'{split}.image.npy'), x)
      counts[split], shape = len(x), x.shape[1:]
      histograms = preparation.pixel_counts(x) if split == 'train' else histograms
  num_classes = int(max(labels['train'].max(initial=0), labels['test'].max(initial=0))) + 1
  for split, y in labels.items():
    np.save(os.path.join(out, f'{split}.label.npy'), y)
  preparation.write_info(out, [str(c) for c in range(num_classes)], counts, shape, *preparation.stats_of(histograms),
             {'kind': 'npz', 'path': path, 'fingerprint': fingerprint([path]),
              'compared': 'the file\'s size and modification time'})
  files.seal(out)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(out, directory)


def _to_pil(image: np.ndarray):
  from PIL import Image
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


# ---------------------------------------------------------------------------------------------------------
# What data.py and pipelines.py ask of a source.

def spec_fields(name: str, grayscale: bool) -> dict[str, Any]:
  """The DatasetSpec fields of a source (its mean and std come from the prepared arrays): a folder's images are
  fitted to the run's size; a NumPy file's and a TFDS dataset's keep theirs where square and fixed (read from the
  file's headers, or the TFDS builder's features). A folder is looked at only when it is prepared, so that a
  config naming one validates on a machine without it."""
  if kind(name) == 'folder':
    return {'image_size': 0, 'channels': 1 if grayscale else 3}
  if kind(name) == 'tfds':
    image_size, channels, _ = tfds_features(name)
    return {'image_size': image_size, 'channels': 1 if grayscale else channels}
  path = check_path(name)
  shape = npz_headers(path)['x_train'][0]
  layout = npz_layout(shape, path)
  height, width, channels = {'HW': (shape[1], shape[2], 1), 'HWC': shape[1:], 'CHW': (*shape[2:], shape[1])}[layout]
  return {'image_size': height if height == width else 0, 'channels': min(channels, 3)}


def prepare(data_config: ml_collections.ConfigDict, directory: str, size: int, prepared: dict | None,
            tfds_builder: Callable[[], Any]) -> bool:
  """Prepares the source of ``config.data`` into ``directory`` unless ``prepared`` (the arrays' recorded source)
  matches it; True when it prepared. ``tfds_builder``: the prepared TFDS builder of a TFDS dataset, asked for only
  when its arrays are to be written (its examples do not change while its name and version do not, so arrays
  written from it are reused). Processes sharing a data_dir prepare it once, under a lock."""
  name = data_config.name
  if kind(name) in ('folder', 'npz'):
    path = check_path(name)
    listing = list_folder(path, name) if kind(name) == 'folder' else None  # listed once: fingerprint and files
    now = listing.record['fingerprint'] if listing else fingerprint([path])
  elif prepared:
    return False
  else:
    listing = tfds_listing(name, tfds_builder())
    now = listing.record['fingerprint']
  if prepared and prepared.get('fingerprint') == now:
    return False
  if prepared:
    logging.info('%s changed since it was prepared (%s differ); preparing it anew.', name, prepared.get('compared'))
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with files.locked(directory + '.lock', on_wait=lambda: logging.info('Waiting for another process preparing %s.',
                                                                      name)):
    info = os.path.join(directory, 'info.json')
    if os.path.exists(info) and files.read_json(info, 'it is rewritten').get('source', {}).get('fingerprint') == now:
      return False  # another process prepared it meanwhile
    logging.info('Preparing %s into %s (once; a later run reuses it while the source is unchanged).', name, directory)
    if listing:  # a TFDS dataset of grayscale images stays grayscale
      grayscale = bool(data_config.grayscale) or (kind(name) != 'folder' and tfds_features(name)[1] == 1)
      preparation.prepare(listing, directory, size, grayscale)
    else:
      prepare_npz(name, directory, size)
  return True


def features(data_config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """The features a source's arrays will have ({'image', 'label'}, as ``arrays.Feature``), without preparing it."""
  from cnnjax import arrays
  name = data_config.name
  if kind(name) not in ('folder', 'npz'):
    num_classes = tfds_features(name)[2]
  elif kind(name) == 'folder':
    num_classes = len(folder_layout(check_path(name))['train'])
  else:
    with np.load(check_path(name)) as archive:
      num_classes = int(max(np.max(archive['y_train'], initial=0), np.max(archive['y_test'], initial=0))) + 1
  return {'image': arrays.Feature(image_shape), 'label': arrays.Feature((), num_classes)}
