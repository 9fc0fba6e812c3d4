"""A user's own data: an image folder (``--config.data.name=folder:PATH``) or a NumPy file (``npz:PATH``),
prepared once into cnnjax's arrays (``arrays.py``'s format: uint8 images, labels, info.json with the classes and
the training split's per-channel mean and std, sealed), which both pipelines read.

A folder holds one subdirectory per class (``PATH/cat/*.jpg``), or ``PATH/train/<class>/`` and
``PATH/test/<class>/``; without a test folder a seeded, stratified ``TEST_FRACTION`` of each class is held out.
Images are decoded by pillow on a thread per core (``images.decode``; pillow releases the GIL while it decodes
and resizes), their short side scaled to the run's image size and the centre cropped. Preparation writes into
``<arrays>.partial`` chunk by chunk, so an interrupted one resumes where it stopped; the arrays record the
source's fingerprint (each file's size and modification time), and a source that changed is prepared anew.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from cnnjax import files, images
from cnnjax.errors import DataError

KINDS = ('folder', 'npz')
TEST_FRACTION = 0.2  # a folder without a test folder: the share of each class held out for testing
SPLIT_SEED = 0  # the held-out test split and the training order do not move with config.seed
DEFAULT_SIZE = 224  # folder images: the side they are fitted to when --config.data.image_size is 0
CHUNK = 512  # the most images decoded between two saves of a preparation's progress
CHUNK_BYTES = 24 << 20  # ... and at most this many bytes of them, which the preparing process holds at once
SKIPPED_NAMED = 5  # bad files named in the log (all are counted)
PROGRESS_EVERY_S = 10.0


def kind(name: str) -> str | None:
  """'folder' or 'npz' for a ``folder:PATH`` or ``npz:PATH`` name, else None (a built-in or TFDS dataset)."""
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
# What a source holds, before anything is decoded.

@dataclasses.dataclass(frozen=True)
class Listing:
  """A source's examples, in the order they are written: per split the files (folder) or row indices (npz), and
  their labels; the class names; the source's fingerprint; and whether the test split was held out of the
  training files (no test folder)."""
  classes: tuple[str, ...]
  items: dict[str, list[Any]]  # split -> files (folder) or row indices (npz)
  labels: dict[str, np.ndarray]
  fingerprint: str
  held_out: bool = False


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


def _held_out(labels: np.ndarray) -> np.ndarray:
  """A seeded, stratified test mask: round(TEST_FRACTION x n) of each class's examples, at least one."""
  rng = np.random.default_rng(SPLIT_SEED)
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    test[rng.permutation(members)[:max(1, round(TEST_FRACTION * len(members)))]] = True
  return test


def list_folder(root: str) -> Listing:
  """The folder's examples: its classes (sorted folder names), the training files in a seeded shuffled order (the
  validation split is carved from their end) and the test files."""
  layout = folder_layout(root)
  classes = tuple(layout['train'])
  split_files = {split: [(f, classes.index(c)) for c, found in by_class.items() for f in found]
                 for split, by_class in layout.items()}
  every = [f for pairs in split_files.values() for f, _ in pairs]
  held_out = 'test' not in split_files
  if held_out:
    pairs = split_files['train']
    test = _held_out(np.array([label for _, label in pairs]))
    split_files = {'train': [p for p, t in zip(pairs, test, strict=True) if not t],
                   'test': [p for p, t in zip(pairs, test, strict=True) if t]}
  order = np.random.default_rng(SPLIT_SEED).permutation(len(split_files['train']))
  split_files['train'] = [split_files['train'][i] for i in order]
  return Listing(classes, {s: [f for f, _ in pairs] for s, pairs in split_files.items()},
                 {s: np.array([label for _, label in pairs], np.int32) for s, pairs in split_files.items()},
                 fingerprint(every), held_out)


# ---------------------------------------------------------------------------------------------------------
# Preparing a folder: decode in worker processes, resumably, into the arrays.



class _Progress:
  """Logs images done / total, the rate and the time left, every PROGRESS_EVERY_S seconds."""

  def __init__(self, what: str, total: int, done: int):
    self.what, self.total, self.start_done, self.start = what, total, done, time.monotonic()
    self.last = self.start

  def __call__(self, done: int) -> None:
    now = time.monotonic()
    if now - self.last < PROGRESS_EVERY_S and done < self.total:
      return
    self.last = now
    rate = (done - self.start_done) / max(now - self.start, 1e-9)
    left = (self.total - done) / rate if rate else float('inf')
    logging.info('Preparing %s: %s / %s images (%.0f/s, %s left).', self.what, f'{done:,}', f'{self.total:,}', rate,
                 f'{left:.0f} s' if np.isfinite(left) else '?')


def prepare_folder(name: str, listing: Listing, directory: str, size: int, grayscale: bool) -> None:
  """Decodes the listing's images into ``directory`` (arrays.py's format), through ``directory``.partial, which
  an interrupted preparation resumes from (same source, size and mode) or starts anew."""
  partial = directory + '.partial'
  state_file = os.path.join(partial, 'progress.json')
  key = {'fingerprint': listing.fingerprint, 'size': size, 'grayscale': grayscale}
  state = files.read_json(state_file, 'it is rewritten') if os.path.exists(state_file) else None
  if state is None or state['key'] != key:
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    state = {'key': key, 'done': {s: 0 for s in listing.items}, 'bad': [], 'upscaled': 0}
  channels = 1 if grayscale else 3
  total = sum(len(v) for v in listing.items.values())
  progress = _Progress(name, total, sum(state['done'].values()))
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count(), thread_name_prefix='cnnjax-decode') as pool:
    for split, paths in listing.items.items():
      out = Rows(os.path.join(partial, f'{split}.raw.npy'), (len(paths), size, size, channels))
      step = min(CHUNK, max(1, CHUNK_BYTES // (size * size * channels)))
      for start in range(state['done'][split], len(paths), step):
        chunk = paths[start:start + step]
        rows = np.zeros((len(chunk), size, size, channels), np.uint8)
        for offset, (array, upscaled, why) in enumerate(pool.map(lambda p: images.decode(p, size, grayscale), chunk)):
          if array is None:
            state['bad'].append([split, start + offset, os.path.relpath(chunk[offset], path_of(name)), why])
          else:
            rows[offset] = array  # each decoded image is dropped once copied in
            state['upscaled'] += upscaled
        out.write(start, rows)
        out.sync()
        state['done'][split] = start + len(chunk)
        files.write_json(state_file, state)  # after the rows are on disk: a resumed run trusts them
        progress(sum(state['done'].values()))
      out.close()
  _finish(name, listing, partial, directory, state)


class Rows:
  """An .npy file of fixed shape [N, ...] (uint8) written and read a few rows at a time with positioned reads
  and writes, not memory-mapped, so that its rows never count towards this process's memory; an existing file of
  that shape is opened as it is (a resumed preparation's)."""

  def __init__(self, path: str, shape: tuple[int, ...]):
    header = {'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False, 'shape': shape}
    self.row_bytes = int(np.prod(shape[1:]))
    self.shape = shape
    if not os.path.exists(path):
      with open(path, 'wb') as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + shape[0] * self.row_bytes)
    with open(path, 'rb') as f:
      np.lib.format.read_magic(f)
      np.lib.format.read_array_header_1_0(f)
      self.offset = f.tell()
    self.fd = os.open(path, os.O_RDWR)

  def write(self, start: int, rows: np.ndarray) -> None:
    os.pwrite(self.fd, memoryview(np.ascontiguousarray(rows, np.uint8)).cast('B'),
              self.offset + start * self.row_bytes)  # no copy of a contiguous array

  def read(self, index: Sequence[int]) -> np.ndarray:
    rows = np.empty((len(index), *self.shape[1:]), np.uint8)
    flat = rows.reshape(len(index), -1)
    for k, i in enumerate(index):
      os.preadv(self.fd, [memoryview(flat[k])], self.offset + int(i) * self.row_bytes)  # straight into ``rows``
    return rows

  def sync(self) -> None:
    os.fsync(self.fd)

  def close(self) -> None:
    os.close(self.fd)


def _finish(name: str, listing: Listing, partial: str, directory: str, state: dict) -> None:
  """Drops the bad files' rows, computes the training split's statistics, writes info.json, seals, and moves
  the arrays into ``directory``."""
  if state['bad']:
    named = '; '.join(f'{p} ({why})' for _, _, p, why in state['bad'][:SKIPPED_NAMED])
    more = ', ...' if len(state['bad']) > SKIPPED_NAMED else ''
    logging.warning('Skipped %d file(s) of %s that pillow cannot read as images (not images, or cut short): %s%s.',
                    len(state['bad']), name, named, more)
  if state['upscaled']:
    logging.info('%d images of %s were smaller than %d pixels on their short side and were upscaled.',
                 state['upscaled'], name, state['key']['size'])
  out = f'{directory}.tmp-{os.getpid()}'
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  counts, histograms, shape = {}, None, None
  side, channels = state['key']['size'], 1 if state['key']['grayscale'] else 3
  for split, paths in listing.items.items():
    bad = {i for s, i, *_ in state['bad'] if s == split}
    kept = np.array([i for i in range(len(paths)) if i not in bad], np.int64)
    labels = listing.labels[split][kept]
    missing = sorted(set(range(len(listing.classes))) - set(labels.tolist()))
    if missing:
      raise DataError(f'no readable image of class {", ".join(listing.classes[i] for i in missing)} in the {split} '
                      f'split of {name}; add images that pillow reads')
    raw = Rows(os.path.join(partial, f'{split}.raw.npy'), (len(paths), side, side, channels))
    images_out = Rows(os.path.join(out, f'{split}.image.npy'), (len(kept), side, side, channels))
    for start in range(0, len(kept), STATS_CHUNK):  # a few rows at a time: never the images twice in memory
      rows = raw.read(kept[start:start + STATS_CHUNK])
      images_out.write(start, rows)
      if split == 'train':
        histograms = pixel_counts(rows, histograms)
    raw.close()
    images_out.close()
    np.save(os.path.join(out, f'{split}.label.npy'), labels)
    counts[split], shape = len(kept), (side, side, channels)
  write_info(out, listing.classes, counts, shape, *stats_of(histograms),
             {'kind': 'folder', 'path': path_of(name), 'fingerprint': listing.fingerprint,
              'compared': 'each file\'s path, size and modification time'},
             skipped=len(state['bad']))
  files.seal(out)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(out, directory)
  shutil.rmtree(partial, ignore_errors=True)


STATS_CHUNK = 64  # images counted at a time for the statistics


def pixel_counts(images_u8: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
  """``counts`` (channels x 256, int64; None: zeros) plus each channel's histogram of ``images_u8`` [N, H, W, C],
  counted STATS_CHUNK images at a time."""
  channels = images_u8.shape[-1]
  counts = np.zeros((channels, 256), np.int64) if counts is None else counts
  for start in range(0, len(images_u8), STATS_CHUNK):
    chunk = np.asarray(images_u8[start:start + STATS_CHUNK])
    for c in range(channels):
      counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
  return counts


def stats_of(counts: np.ndarray) -> tuple[list[float], list[float]]:
  """Per-channel mean and std of pixel values in [0, 1] from their histograms (``pixel_counts``): exact."""
  values = np.arange(256) / 255.0
  total = counts.sum(1)
  mean = counts @ values / total
  variance = counts @ values**2 / total - mean**2
  return mean.round(6).tolist(), np.sqrt(np.maximum(variance, 0.0)).round(6).tolist()


def write_info(directory: str, classes: Sequence[str], counts: dict[str, int], image_shape: Sequence[int],
               mean: Sequence[float], std: Sequence[float], source: dict[str, Any], **extra: Any) -> None:
  """info.json of prepared arrays: the features as the task heads read them, the splits' sizes, the classes, the
  training images' per-channel mean and std, and where they came from."""
  features = {'image': {'shape': list(image_shape), 'num_classes': None},
              'label': {'shape': [], 'num_classes': len(classes)}}
  files.write_json(os.path.join(directory, 'info.json'),
                   {'features': features, 'num_examples': counts, 'classes': list(classes), 'mean': mean, 'std': std,
                    'source': source, **extra})


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
      histograms = pixel_counts(x) if split == 'train' else histograms
  num_classes = int(max(labels['train'].max(initial=0), labels['test'].max(initial=0))) + 1
  for split, y in labels.items():
    np.save(os.path.join(out, f'{split}.label.npy'), y)
  write_info(out, [str(c) for c in range(num_classes)], counts, shape, *stats_of(histograms),
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
  fitted to the run's size; a NumPy file's keep theirs where square (read from its headers). A folder is looked at
  only when it is prepared, so that a config naming one validates on a machine without it."""
  if kind(name) == 'folder':
    return {'image_size': 0, 'channels': 1 if grayscale else 3}
  path = check_path(name)
  shape = npz_headers(path)['x_train'][0]
  layout = npz_layout(shape, path)
  height, width, channels = {'HW': (shape[1], shape[2], 1), 'HWC': shape[1:], 'CHW': (*shape[2:], shape[1])}[layout]
  return {'image_size': height if height == width else 0, 'channels': min(channels, 3)}


def prepare(data_config: ml_collections.ConfigDict, directory: str, size: int, prepared: dict | None) -> bool:
  """Prepares the source of ``config.data`` into ``directory`` unless ``prepared`` (the arrays' recorded source)
  matches it; True when it prepared. Processes sharing a data_dir prepare it once, under a lock."""
  name = data_config.name
  path = check_path(name)
  listing = list_folder(path) if kind(name) == 'folder' else None  # listed once: the fingerprint and the files
  now = listing.fingerprint if listing else fingerprint([path])
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
    if listing:
      if listing.held_out:
        logging.info('%s has no test folder: %d of its %d files (%g of each class, seeded) are held out for testing.',
                     name, len(listing.items['test']), sum(len(v) for v in listing.items.values()), TEST_FRACTION)
      prepare_folder(name, listing, directory, size, bool(data_config.grayscale))
    else:
      prepare_npz(name, directory, size)
  return True


def features(data_config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """The features a source's arrays will have ({'image', 'label'}, as ``arrays.Feature``), without preparing it."""
  from cnnjax import arrays
  name = data_config.name
  path = check_path(name)
  if kind(name) == 'folder':
    num_classes = len(folder_layout(path)['train'])
  else:
    with np.load(path) as archive:
      num_classes = int(max(np.max(archive['y_train'], initial=0), np.max(archive['y_test'], initial=0))) + 1
  return {'image': arrays.Feature(image_shape), 'label': arrays.Feature((), num_classes)}
