"""Preparing encoded images into cnnjax's arrays (``arrays.py``'s format: uint8 images and labels per split, and
info.json with the classes and the training split's per-channel mean and std, sealed), whatever holds them: an
image folder's files or a TFDS dataset's records (``sources``).

A ``Listing`` says what a source holds before anything is decoded. ``prepare`` decodes it with pillow on a thread
per core (``images.decode``; pillow releases the GIL while it decodes and resizes), fitting each image to the
run's size, into ``<arrays>.partial`` chunk by chunk, so that an interrupted preparation resumes where it stopped.
``_finish`` then carves the splits (a seeded, stratified test split where the source has none), drops the files
that are not images, computes the statistics from histograms, and seals and moves the arrays into place.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from cnnjax import files, images
from cnnjax.errors import DataError

TEST_FRACTION = 0.2  # a source without a test split: the share of each class held out for testing
SPLIT_SEED = 0  # the held-out test split and the training order do not move with config.seed
CHUNK = 512  # the most images decoded between two saves of a preparation's progress
CHUNK_BYTES = 24 << 20  # ... and at most this many bytes of them, which the preparing process holds at once
SKIPPED_NAMED = 5  # bad files named in the log (all are counted)
PROGRESS_EVERY_S = 10.0
STATS_CHUNK = 64  # images counted at a time for the statistics

Read = Callable[[str, int, int], list[tuple[Any, int]]]  # (split, start, stop) -> [(path or bytes, label)]


@dataclasses.dataclass(frozen=True)
class Listing:
  """A source's examples, before anything is decoded.

  Attributes:
    name: the source as the user named it (``--config.data.name``), for the log.
    classes: the class names, in label order.
    sizes: the source's splits ('train', and 'test' where it has one) -> examples.
    read: ``(split, start, stop) -> [(what images.decode reads, label)]`` of those examples, in order.
    describe: ``(split, index) -> str``: an example's name in the log (a file's path).
    record: what info.json keeps of the source: its kind, path or name, and ``fingerprint`` (with what it
      compares, ``compared``), by which a changed source is prepared anew.
    shuffle: whether the training order is shuffled once (seeded), so that the validation split carved from its
      end holds every class: a folder's files are listed class by class; a TFDS split is in its own order.
  """
  name: str
  classes: tuple[str, ...]
  sizes: dict[str, int]
  read: Read
  describe: Callable[[str, int], str]
  record: dict[str, Any]
  shuffle: bool = True

  @property
  def held_out(self) -> bool:
    """Whether the test split is held out of the training examples (the source has none)."""
    return 'test' not in self.sizes


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


def prepare(listing: Listing, directory: str, size: int, grayscale: bool) -> None:
  """Decodes the listing's images into ``directory`` (arrays.py's format), through ``directory``.partial, which
  an interrupted preparation resumes from (same source, size and mode) or starts anew."""
  partial = directory + '.partial'
  state_file = os.path.join(partial, 'progress.json')
  key = {'fingerprint': listing.record['fingerprint'], 'size': size, 'grayscale': grayscale}
  state = files.read_json(state_file, 'it is rewritten') if os.path.exists(state_file) else None
  if state is None or state['key'] != key:
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    state = {'key': key, 'done': {s: 0 for s in listing.sizes}, 'labels': {s: [] for s in listing.sizes},
             'bad': [], 'upscaled': 0}
  channels = 1 if grayscale else 3
  progress = _Progress(listing.name, sum(listing.sizes.values()), sum(state['done'].values()))
  step = min(CHUNK, max(1, CHUNK_BYTES // (size * size * channels)))
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count(), thread_name_prefix='cnnjax-decode') as pool:
    for split, count in listing.sizes.items():
      out = Rows(os.path.join(partial, f'{split}.raw.npy'), (count, size, size, channels))
      for start in range(state['done'][split], count, step):
        chunk = listing.read(split, start, min(start + step, count))
        rows = np.zeros((len(chunk), size, size, channels), np.uint8)
        decoded = pool.map(lambda example: images.decode(example[0], size, grayscale), chunk)
        for offset, (array, upscaled, why) in enumerate(decoded):
          if array is None:
            state['bad'].append([split, start + offset, listing.describe(split, start + offset), why])
          else:
            rows[offset] = array  # each decoded image is dropped once copied in
            state['upscaled'] += upscaled
        out.write(start, rows)
        out.sync()
        state['labels'][split] += [int(label) for _, label in chunk]
        state['done'][split] = start + len(chunk)
        files.write_json(state_file, state)  # after the rows are on disk: a resumed run trusts them
        progress(sum(state['done'].values()))
      out.close()
  _finish(listing, partial, directory, state)


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


def held_out(labels: np.ndarray) -> np.ndarray:
  """A seeded, stratified test mask: round(TEST_FRACTION x n) of each class's examples, at least one."""
  rng = np.random.default_rng(SPLIT_SEED)
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    test[rng.permutation(members)[:max(1, round(TEST_FRACTION * len(members)))]] = True
  return test


def carve(labels: dict[str, np.ndarray], shuffle: bool) -> dict[str, tuple[str, np.ndarray]]:
  """The arrays' splits as (the source's split, its example indices): 'train' (shuffled once, seeded, with
  ``shuffle``) and 'test', held out of the training examples (``held_out``) where the source has no test split."""
  if 'test' in labels:
    out = {'train': ('train', np.arange(len(labels['train']))), 'test': ('test', np.arange(len(labels['test'])))}
  else:
    test = held_out(labels['train'])
    out = {'train': ('train', np.flatnonzero(~test)), 'test': ('train', np.flatnonzero(test))}
  if shuffle:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(out['train'][1]))
    out['train'] = ('train', out['train'][1][order])
  return out


def _report(listing: Listing, state: dict, held: int) -> None:
  """Logs the held-out test split, the bad files (counted, the first few named) and the upscaled images."""
  total = sum(listing.sizes.values())
  if listing.held_out:
    logging.info('%s has no test split: %d of its %d examples (%g of each class, seeded) are held out for testing.',
                 listing.name, held, total, TEST_FRACTION)
  if state['bad']:
    named = '; '.join(f'{p} ({why})' for _, _, p, why in state['bad'][:SKIPPED_NAMED])
    more = ', ...' if len(state['bad']) > SKIPPED_NAMED else ''
    logging.warning('Skipped %d file(s) of %s that pillow cannot read as images (not images, or cut short): %s%s.',
                    len(state['bad']), listing.name, named, more)
  if state['upscaled']:
    logging.info('%d images of %s were smaller than %d pixels on their short side and were upscaled.',
                 state['upscaled'], listing.name, state['key']['size'])


def _finish(listing: Listing, partial: str, directory: str, state: dict) -> None:
  """Carves the splits, drops the bad files' rows, computes the training split's statistics, writes info.json,
  seals, and moves the arrays into ``directory``."""
  labels = {split: np.array(found, np.int32) for split, found in state['labels'].items()}
  splits = carve(labels, listing.shuffle)
  _report(listing, state, len(splits['test'][1]))
  out = f'{directory}.tmp-{os.getpid()}'
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  counts, histograms = {}, None
  side, channels = state['key']['size'], 1 if state['key']['grayscale'] else 3
  raw = {split: Rows(os.path.join(partial, f'{split}.raw.npy'), (count, side, side, channels))
         for split, count in listing.sizes.items()}
  for split, (source, index) in splits.items():
    bad = {i for s, i, *_ in state['bad'] if s == source}
    kept = np.array([i for i in index if i not in bad], np.int64)
    kept_labels = labels[source][kept]
    missing = sorted(set(range(len(listing.classes))) - set(kept_labels.tolist()))
    if missing:
      raise DataError(f'no readable image of class {", ".join(listing.classes[i] for i in missing)} in the {split} '
                      f'split of {listing.name}; add images that pillow reads')
    images_out = Rows(os.path.join(out, f'{split}.image.npy'), (len(kept), side, side, channels))
    for start in range(0, len(kept), STATS_CHUNK):  # a few rows at a time: never the images twice in memory
      rows = raw[source].read(kept[start:start + STATS_CHUNK])
      images_out.write(start, rows)
      if split == 'train':
        histograms = pixel_counts(rows, histograms)
    images_out.close()
    np.save(os.path.join(out, f'{split}.label.npy'), kept_labels)
    counts[split] = len(kept)
  for rows in raw.values():
    rows.close()
  write_info(out, listing.classes, counts, (side, side, channels), *stats_of(histograms), listing.record,
             skipped=len(state['bad']))
  files.seal(out)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(out, directory)
  shutil.rmtree(partial, ignore_errors=True)


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
