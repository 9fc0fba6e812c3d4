"""How data enters a run: ``Pipeline``, the one interface of the host and device pipelines, and
``build``, the one place where a run's pipeline is chosen and made.

A pipeline answers what the loop asks of data: what each train call takes (``train_inputs``), how a pure step of
``steps.py`` receives it (``train_step`` and ``eval_step`` wrap them before they are mapped over devices), the
evaluation batches of a split (``evaluation``) and a sample of real examples for analysis (``sample``). Both hand
the steps raw images; normalisation and augmentation are ``augment``'s, inside the jitted step, keyed by each
example's stream position, so the two pipelines augment alike (docs/data.md).
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Protocol

import jax
import ml_collections
import numpy as np

from cnnjax import arrays, augment, data, device_pipeline, heads, parallel, sources, steps

PyTree = Any


class Pipeline(Protocol):
  """What a run's loop, sweep and benchmarks ask of its data, whichever pipeline holds it.

  Attributes:
    name: 'host' (a batch made on the host fed to each call) or 'device' (the splits on every device; each step
      makes its own batch).
    features: the dataset's features (name -> shape and classes), as the task heads read them.
    num_examples: TFDS split name -> examples.
    classes: the class names, where the dataset has them (a user's folder: its folder names).
    replicated_input: whether a train call takes the same placed arrays on every device (device) or a batch
      split over them (host), as ``parallel.Backend.map_train_step`` maps it.
  """
  name: str
  features: Any
  num_examples: dict[str, int]
  classes: tuple[str, ...] | None
  replicated_input: bool

  def train_step(self, step: Callable, population_map: str | None = None) -> Callable:
    """``step(state, batch, rng)`` as the call of one device: ``(state, inputs, rng)`` (for a population,
    ``rng`` holds every member's keys and ``population_map`` says how the members are mapped)."""

  def eval_step(self, evaluation: Callable, population_map: str | None = None) -> Callable:
    """``evaluation(state, batch)`` as the call of one device on this pipeline's evaluation inputs."""

  def train_inputs(self, start_step: int) -> Callable[[], PyTree]:
    """What feeds each train call from ``start_step`` on, placed for the devices."""

  def evaluation(self, split: str, eval_step: Callable) -> tuple[Iterable[PyTree], Callable]:
    """(host batches, function of (state, placed batch)) of the 'val' or 'test' split, for ``train.evaluate``."""

  def sample(self, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` real examples of ``split`` as host arrays (images normalised [N, H, W, C]; targets)."""


def _host_train_step(config: ml_collections.ConfigDict, spec: data.DatasetSpec, step: Callable) -> Callable:
  """``step`` taking a host batch of raw images with their positions, which it augments (``augment``)."""
  _, augmented = augment.preprocessing(config.data, spec)
  return functools.partial(steps.host_train_step, step=step, augment=functools.partial(
      augment.augment_batch, key=steps.data_key(config), preprocess=augmented))


def _host_eval_step(config: ml_collections.ConfigDict, spec: data.DatasetSpec, evaluation: Callable) -> Callable:
  """``evaluation`` taking a host batch of raw images, which it normalises."""
  normalize, _ = augment.preprocessing(config.data, spec)
  return functools.partial(steps.host_eval_step, evaluation=evaluation, normalize=normalize.normalize)


@dataclasses.dataclass
class _Arrays:
  """What both pipelines of prepared arrays hold: the splits ({'train': the training then the validation
  examples, 'test': ...}, each {'image': uint8 [N, H, W, C], 'target'}) and what they are."""
  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  arrays: dict[str, dict[str, np.ndarray]]
  features: Any
  num_examples: dict[str, int]
  backend: parallel.Backend
  classes: tuple[str, ...] | None = None
  MMAP: ClassVar[bool] = False  # images memory-mapped (read from disk as they are indexed) instead of loaded

  @classmethod
  def load(cls, config: ml_collections.ConfigDict, spec: data.DatasetSpec, directory: str, found: arrays.Info,
           head: heads.Head, backend: parallel.Backend) -> _Arrays:
    """The pipeline of the arrays ``found`` in ``directory`` (targets as ``head`` maps them)."""
    return cls(config, spec, _split_arrays(config, spec, directory, found, head, cls.MMAP), found.features,
               found.num_examples, backend, found.classes)

  def _eval_range(self, split: str) -> tuple[str, int, int]:
    """(which array, first example, examples) of the 'val' or 'test' split."""
    n_train, n_val = data.split_sizes(self.config.data, self.num_examples)
    return ('test', 0, len(self.arrays['test']['target'])) if split == 'test' else ('train', n_train, n_val)

  def _eval_indices(self, split: str) -> tuple[str, list[dict[str, np.ndarray]]]:
    which, start, count = self._eval_range(split)
    return which, device_pipeline.eval_indices(start, count, self.config.eval_batch_size, *self.backend.eval_rows())

  def sample(self, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    which, start, available = self._eval_range(split)
    rows = slice(start, start + min(count, available))
    normalize, _ = augment.preprocessing(self.config.data, self.spec)
    return np.asarray(normalize.normalize(self.arrays[which]['image'][rows])), self.arrays[which]['target'][rows]


@dataclasses.dataclass
class DevicePipeline(_Arrays):
  """The splits as uint8 arrays on every device (``device_pipeline``), placed once; each step gathers and
  augments its own batch from (seed, step), and each evaluation call takes the indices of its examples."""
  name: str = 'device'
  replicated_input: bool = True
  _placed: dict[str, PyTree] = dataclasses.field(default_factory=dict, repr=False)

  def placed(self, which: str) -> PyTree:
    """``arrays[which]`` on every device, placed once."""
    if which not in self._placed:
      self._placed[which] = self.backend.put_replicated(self.arrays[which])
    return self._placed[which]

  def train_step(self, step: Callable, population_map: str | None = None) -> Callable:
    _, augmented = augment.preprocessing(self.config.data, self.spec)
    n_train = data.split_sizes(self.config.data, self.num_examples)[0]
    batches = functools.partial(  # (data, step, device, seed=, key=) -> batch
        device_pipeline.train_batch, num_train=n_train, batch_size=self.config.batch_size,
        per_device=self.config.batch_size // self.backend.data_devices, preprocess=augmented)
    if population_map:
      return functools.partial(steps.population_train_step, step=step, batches=batches,
                               map_members=steps.MEMBER_MAPS[population_map])
    make_batch = functools.partial(batches, seed=self.config.seed, key=steps.data_key(self.config))
    return functools.partial(steps.device_train_step, step=step, make_batch=make_batch)

  def eval_step(self, evaluation: Callable, population_map: str | None = None) -> Callable:
    normalize, _ = augment.preprocessing(self.config.data, self.spec)
    make_batch = functools.partial(device_pipeline.eval_batch, preprocess=normalize)
    evaluate = functools.partial(steps.device_eval_step, evaluation=evaluation, make_batch=make_batch)
    if population_map:
      return functools.partial(steps.population_eval_step, evaluation=evaluate,
                               map_members=steps.MEMBER_MAPS[population_map])
    return evaluate

  def train_inputs(self, start_step: int) -> Callable[[], PyTree]:
    return lambda: self.placed('train')  # each step makes its batch from the step count

  def evaluation(self, split: str, eval_step: Callable) -> tuple[Iterable[PyTree], Callable]:
    which, batches = self._eval_indices(split)
    return batches, lambda state, batch: eval_step(state, self.placed(which), batch)


def _split_arrays(config: ml_collections.ConfigDict, spec: data.DatasetSpec, directory: str, found: arrays.Info,
                  head: heads.Head, mmap: bool = False) -> dict[str, dict[str, np.ndarray]]:
  """{'train': the training then the validation examples, 'test': ...}, each {'image': uint8 [N, H, W, C],
  'target'}: the arrays in ``directory``, images memory-mapped with ``mmap`` (targets are read whole)."""
  target = head.target_array(found.features, config.data)
  host = {}
  for split in ('train', 'test'):
    features = arrays.load(directory, split, mmap)
    host[split] = {'image': features['image'], 'target': target(features)}
  return host


@dataclasses.dataclass
class HostPipeline(_Arrays):
  """The prepared arrays read on the host, memory-mapped: each call's batch is the device pipeline's (the same
  positions and permutation, so the same examples and augmentation keys), gathered on a thread that keeps
  ``config.data.prefetch`` batches ahead, placed and handed to the step raw, which augments it. No TensorFlow."""
  name: str = 'host'
  replicated_input: bool = False
  MMAP: ClassVar[bool] = True

  @functools.cached_property
  def _order(self) -> Callable[[np.ndarray], np.ndarray]:
    """positions (uint32) -> training indices, the device pipeline's permutation, computed on the host's CPU."""
    n_train = data.split_sizes(self.config.data, self.num_examples)[0]
    cpu = jax.local_devices(backend='cpu')[0]
    permute = jax.jit(lambda p: device_pipeline.permute(p % np.uint32(n_train), n_train, self.config.seed,
                                                        p // np.uint32(n_train)), device=cpu)
    return lambda p: np.asarray(permute(p))

  def batch(self, step: int, rows: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
    """This process's rows of step ``step``'s batch, raw: {'image', 'target', 'position'}, [local devices, b, ...];
    ``rows``: (devices, first, local) to make instead (default the back-end's, ``eval_rows``)."""
    devices, first, local = rows or self.backend.eval_rows()
    per_device = self.config.batch_size // devices
    start = step * self.config.batch_size + first * per_device
    positions = np.arange(start, start + local * per_device, dtype=np.uint64).astype(np.uint32)
    index = self._order(positions)
    train = self.arrays['train']
    rows = {'image': train['image'][index], 'target': train['target'][index], 'position': positions}
    return jax.tree.map(lambda x: x.reshape(local, per_device, *x.shape[1:]), rows)

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1

  def train_step(self, step: Callable, population_map: str | None = None) -> Callable:
    return _host_train_step(self.config, self.spec, step)

  def eval_step(self, evaluation: Callable, population_map: str | None = None) -> Callable:
    return _host_eval_step(self.config, self.spec, evaluation)

  def train_inputs(self, start_step: int) -> Callable[[], PyTree]:
    batches = prefetch((self.backend.put_batch(b) for b in self.train_batches(start_step)), self.config.data.prefetch)
    return lambda: next(batches)

  def eval_batches(self, split: str) -> list[dict[str, np.ndarray]]:
    """The 'val' or 'test' split in batches of eval_batch_size, this process's rows, padded and masked."""
    which, batches = self._eval_indices(split)
    held = self.arrays[which]
    return [{'image': held['image'][b['index']], 'target': held['target'][b['index']], 'mask': b['mask']}
            for b in batches]

  def evaluation(self, split: str, eval_step: Callable) -> tuple[Iterable[PyTree], Callable]:
    return self.eval_batches(split), eval_step


def prefetch(iterator: Iterator, size: int) -> Iterator:
  """``iterator``'s items made ``size`` ahead on a daemon thread; an error there is raised here, in order."""
  items: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def fill():
    try:
      for item in iterator:
        items.put(item)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
      items.put(e)
    items.put(done)

  threading.Thread(target=fill, daemon=True, name='cnnjax-prefetch').start()
  while (item := items.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


def build(config: ml_collections.ConfigDict, spec: data.DatasetSpec, head: heads.Head, backend: parallel.Backend,
          data_dir: str | None) -> Pipeline:
  """The run's pipeline, its data prepared: ``--config.data.pipeline``, with auto the device pipeline where the
  arrays fit (``data.pipeline``). Every dataset is written once as arrays: a built-in TFDS dataset's splits as
  TFDS holds them (``arrays.write``); a folder, an npz file or a TFDS dataset by name decoded and fitted to the
  run's image size (``sources.prepare``). Both pipelines read the arrays with numpy alone (no TensorFlow).

  Raises:
    DataError for data that cannot be had or is damaged.
  """
  directory = arrays.location(config.data, data_dir)
  found = arrays.find(directory)
  if spec.source:  # prepared again when the source changed
    tfds_builder = functools.partial(data.prepare, config.data, data_dir)
    if sources.prepare(config.data, directory, data.image_size(config.data), found and found.source, tfds_builder):
      found = arrays.find(directory)
  found = found or arrays.write(data.prepare(config.data, data_dir), directory)
  spec = data.with_stats(spec, found.mean, found.std)
  kind = DevicePipeline if data.pipeline(config.data, found.num_examples) == 'device' else HostPipeline
  return kind.load(config, spec, directory, found, head, backend)
