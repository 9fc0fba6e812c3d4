"""How data enters a run: ``Pipeline``, the one interface of the host (tf.data) and device pipelines, and
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
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import jax
import ml_collections
import numpy as np

from cnnjax import arrays, augment, data, device_pipeline, heads, parallel, steps

if TYPE_CHECKING:  # the host pipeline's modules (TensorFlow) are imported only when a run uses it
  import tensorflow_datasets as tfds

PyTree = Any


class Pipeline(Protocol):
  """What a run's loop, sweep and benchmarks ask of its data, whichever pipeline holds it.

  Attributes:
    name: 'host' (tf.data batches fed to each call) or 'device' (the splits on every device; each step makes its
      own batch).
    features: the dataset's features (name -> shape and classes), as the task heads read them.
    num_examples: TFDS split name -> examples.
    replicated_input: whether a train call takes the same placed arrays on every device (device) or a batch
      split over them (host), as ``parallel.Backend.map_train_step`` maps it.
  """
  name: str
  features: Any
  num_examples: dict[str, int]
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


@dataclasses.dataclass
class HostPipeline:
  """tf.data (``input_pipeline``) reads, shuffles and batches a prepared TFDS dataset on the host; each call
  receives one batch of raw images with their stream positions."""
  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  builder: tfds.core.DatasetBuilder
  head: heads.Head
  backend: parallel.Backend
  name: str = 'host'
  replicated_input: bool = False

  @property
  def features(self):
    return self.builder.info.features

  @property
  def num_examples(self) -> dict[str, int]:
    return data.num_examples(self.builder)

  @functools.cached_property
  def _module(self):
    from cnnjax import input_pipeline  # imports TensorFlow
    return input_pipeline

  def _target(self):
    return self.head.target(self.features, self.config.data)

  def train_batches(self, start_step: int = 0, shard: tuple[int, int] | None = None,
                    num_devices: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Raw training batches from ``start_step`` on, [local devices, per-device batch, ...] (input_pipeline)."""
    return self._module.train_iterator(self.config, self.spec, self.builder, self._target(),
                                       num_devices or jax.local_device_count(), start_step, shard)

  def eval_batches(self, split: str = 'test', num_devices: int | None = None) -> Iterable[dict[str, np.ndarray]]:
    """The 'val' or 'test' split, raw, padded and masked (see input_pipeline)."""
    splits = data.splits(self.config.data, self.builder)
    return self._module.eval_batches(self.config, self.spec, self.builder, self._target(),
                                     num_devices or jax.local_device_count(), getattr(splits, split))

  def train_step(self, step: Callable, population_map: str | None = None) -> Callable:
    assert population_map is None, 'populations train on the device pipeline'  # setup refuses it before
    normalize, augmented = augment.preprocessing(self.config.data, self.spec)
    return functools.partial(steps.host_train_step, step=step, augment=functools.partial(
        augment.augment_batch, key=steps.data_key(self.config), preprocess=augmented))

  def eval_step(self, evaluation: Callable, population_map: str | None = None) -> Callable:
    normalize, _ = augment.preprocessing(self.config.data, self.spec)
    return functools.partial(steps.host_eval_step, evaluation=evaluation, normalize=normalize.normalize)

  def train_inputs(self, start_step: int) -> Callable[[], PyTree]:
    batches = self.train_batches(start_step)
    return lambda: self.backend.put_batch(next(batches))

  def evaluation(self, split: str, eval_step: Callable) -> tuple[Iterable[PyTree], Callable]:
    return self.eval_batches(split), eval_step

  def sample(self, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    normalize, _ = augment.preprocessing(self.config.data, self.spec)
    images, targets = [], []
    for batch in self.eval_batches(split, num_devices=1):
      mask = batch['mask'].reshape(-1)
      images.append(batch['image'].reshape(-1, *batch['image'].shape[2:])[mask])
      targets.append(batch['target'].reshape(-1, *batch['target'].shape[2:])[mask])
      if sum(len(x) for x in images) >= count:
        break
    return np.asarray(normalize.normalize(np.concatenate(images)[:count])), np.concatenate(targets)[:count]


@dataclasses.dataclass
class DevicePipeline:
  """The splits as uint8 arrays on every device (``device_pipeline``), placed once; each step gathers and
  augments its own batch from (seed, step), and each evaluation call takes the indices of its examples."""
  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  arrays: dict[str, dict[str, np.ndarray]]  # {'train': training then validation examples, 'test': ...}
  features: Any
  num_examples: dict[str, int]
  backend: parallel.Backend
  name: str = 'device'
  replicated_input: bool = True
  _placed: dict[str, PyTree] = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def load(cls, config: ml_collections.ConfigDict, spec: data.DatasetSpec, directory: str, found: arrays.Info,
           head: heads.Head, backend: parallel.Backend) -> DevicePipeline:
    """The pipeline of the arrays ``found`` in ``directory`` (targets as ``head`` maps them)."""
    target = head.target_array(found.features, config.data)
    host = {}
    for name, split in (('train', spec.train_split), ('test', spec.test_split)):
      features = arrays.load(directory, split)
      host[name] = {'image': features['image'], 'target': target(features)}
    n_train, n_val, _ = data.split_sizes(config.data, found.num_examples)
    host['train'] = jax.tree.map(lambda x: x[:n_train + n_val], host['train'])
    return cls(config, spec, host, found.features, found.num_examples, backend)

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
    n_train, n_val, _ = data.split_sizes(self.config.data, self.num_examples)
    which = 'test' if split == 'test' else 'train'
    start, count = (0, len(self.arrays['test']['target'])) if split == 'test' else (n_train, n_val)
    batches = device_pipeline.eval_indices(start, count, self.config.eval_batch_size, *self.backend.eval_rows())
    return batches, lambda state, batch: eval_step(state, self.placed(which), batch)

  def sample(self, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    n_train, n_val, _ = data.split_sizes(self.config.data, self.num_examples)
    which, start = ('test', 0) if split == 'test' else ('train', n_train)
    normalize, _ = augment.preprocessing(self.config.data, self.spec)
    rows = slice(start, start + count if split == 'test' else start + min(count, n_val))
    chosen = self.arrays[which]
    return np.asarray(normalize.normalize(chosen['image'][rows])), chosen['target'][rows]


def build(config: ml_collections.ConfigDict, spec: data.DatasetSpec, head: heads.Head, backend: parallel.Backend,
          data_dir: str | None) -> Pipeline:
  """The run's pipeline, its data prepared: ``--config.data.pipeline``, with auto the device pipeline where the
  arrays fit (``data.pipeline``). The device pipeline's arrays, once written, are read with numpy alone (no TFDS
  builder, no TensorFlow).

  Raises:
    DataError for data that cannot be had or is damaged, or the host pipeline chosen without TensorFlow.
  """
  if config.data.pipeline == 'host':
    data.check_host_pipeline(config.data)  # before anything is prepared
  directory = arrays.location(config.data, data_dir)
  found = arrays.find(directory) if config.data.pipeline != 'host' else None
  builder = None if found else data.prepare(config.data, data_dir)
  name = data.pipeline(config.data, found.num_examples if found else data.num_examples(builder))
  if name == 'host':
    data.check_host_pipeline(config.data)
    return HostPipeline(config, spec, builder or data.prepare(config.data, data_dir), head, backend)
  return DevicePipeline.load(config, spec, directory, found or arrays.write(builder, directory), head, backend)
