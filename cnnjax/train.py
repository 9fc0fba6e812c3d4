"""Training: a run's set-up, once (``setup``), and the one loop that trains a run or a population of runs.

``setup(config, data_dir)`` builds everything a run needs, for the loop, the sweeps, the benchmarks and the
tests: the prepared data, the head, the model, the back-end, the schedule, the mapped steps and the initial
state. The steps themselves are pure functions in ``cnnjax/steps.py``, bound here with ``functools.partial``
and mapped over devices by ``--config.parallel`` (``jax.pmap``, default, or ``jax.jit`` of ``jax.shard_map``).
Everything with side effects (logging, evaluation passes, checkpoints, signals) stays in the loop,
``train_and_evaluate`` (``train_population`` for a population).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from cnnjax import (
  analysis,
  arrays,
  checkpointing,
  data,
  device_pipeline,
  files,
  heads,
  models,
  optim,
  parallel,
  steps,
  workdirs,
  writers,
)
from cnnjax.config import apply_overrides, largest_divisor, validate_run
from cnnjax.errors import ConfigError, NonFiniteLoss, Preempted

if TYPE_CHECKING:  # the host pipeline's modules (TensorFlow) are imported only when a run uses it
  import tensorflow_datasets as tfds

  from cnnjax import input_pipeline

Metrics, PyTree = steps.Metrics, steps.PyTree



# Steps dispatched ahead of the host. Unbounded queues of collectives time out XLA:CPU's in-process
# all-reduce with many fake devices on few cores; two steps ahead keeps real accelerators busy.
MAX_STEPS_IN_FLIGHT = 2


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises one ConfigError naming the flag and the fix for any setting that cannot train.

  Pure: closed forms and name look-ups only; no backend, mesh, data or file is touched.

  Args:
    config: the experiment config.
    num_devices: all devices taking part (global), which must divide the batch sizes.
  """
  heads.validate(config)
  data.validate(config.data)
  validate_run(config, num_devices)
  optim.validate(config.optimizer)
  parallel.validate(config.parallel)
  models.validate(config.model, data.image_shape(config.data))
  if config.data.pipeline != 'host' and config.num_train_steps * config.batch_size >= device_pipeline.MAX_POSITIONS:
    raise ConfigError(f'--config.num_train_steps={config.num_train_steps} at --config.batch_size={config.batch_size} '
                      f'is more than the device pipeline counts ({device_pipeline.MAX_POSITIONS:,} examples); use '
                      '--config.data.pipeline=host')
  per_device, size = config.batch_size // num_devices, config.microbatch_size
  if models.batch_normed(config.model) and size != 'auto' and 0 < size < per_device:
    raise ConfigError(f'BatchNorm (--config.model.norm or dense_norm=batch) takes its statistics over the whole '
                      f'per-device batch of {per_device}, which --config.microbatch_size={size} would split; set '
                      '--config.microbatch_size=0 (or auto)')


CPU_MICROBATCH = 64  # microbatch_size=auto on CPU: activations of 64 images stay in cache (docs/performance.md)


def platform_choices(config: ml_collections.ConfigDict, num_devices: int, platform: str) -> tuple[int, bool]:
  """(micro-batch size, CPU speed-ups on) for ``platform`` ('cpu', 'gpu', 'tpu').

  microbatch_size=auto: on CPU the largest divisor of the per-device batch up to ``CPU_MICROBATCH`` (0, the
  whole batch, when that is the batch, and for BatchNorm, whose statistics are over it); elsewhere 0, which
  fills an accelerator.
  cpu_speedups=auto: on for CPU only (the two-step bias broadcast, NHWC/HWIO conv gradients and two-step
  BatchNorm reductions that XLA:CPU runs faster; other compilers fuse the plain forms). Both choices give the
  same values up to rounding.
  """
  size = config.microbatch_size
  if size == 'auto':
    per_device = config.batch_size // num_devices
    whole = platform != 'cpu' or models.batch_normed(config.model)
    size = 0 if whole else largest_divisor(per_device, min(CPU_MICROBATCH, per_device))
    size = 0 if size == per_device else size  # 0: the whole batch at once
  return size, {'on': True, 'off': False}.get(config.cpu_speedups, platform == 'cpu')


# PRNGs whose draws under jax.vmap equal the draws of each key alone (rbg's batching rule draws every key's bits
# from the first key), so that a population's member equals its solo run.
VMAP_INVARIANT_RNGS = ('threefry2x32',)


def population_on(config: ml_collections.ConfigDict, platform: str) -> bool:
  """Whether a sweep trains a point's runs as one population (``train_population``) on ``platform``:
  ``--config.population``, with auto = on for GPU/TPU where the runs can be (threefry2x32, the device pipeline,
  the last weights tested), off on CPU, where vmapped convolutions run slower per member than one run's
  (benchmarks/population.py)."""
  if config.population != 'auto':
    return config.population == 'on'
  return (platform != 'cpu' and config.rng_impl in VMAP_INVARIANT_RNGS and config.data.pipeline != 'host'
          and config.test_checkpoint == 'last')


def population_map(config: ml_collections.ConfigDict, platform: str) -> str:
  """How a population's step maps over its members (``--config.population_map``): 'vmap' (one batched program,
  which fills an accelerator; a member equals its solo run to float32 rounding, which training can amplify) or
  'loop' (``loop_map``: each member the solo run's program in turn; on CPU equal to the last bit); auto = loop on
  CPU, vmap elsewhere."""
  if config.population_map != 'auto':
    return config.population_map
  return 'loop' if platform == 'cpu' else 'vmap'


AUTO_STEPS_PER_DISPATCH = 10  # steps_per_dispatch=auto with the device pipeline (measured: docs/data.md)


def steps_per_dispatch(config: ml_collections.ConfigDict, pipeline: str) -> int:
  """``config.steps_per_dispatch``, with auto = AUTO_STEPS_PER_DISPATCH on the device pipeline, else 1.

  Raises:
    ConfigError for several steps per call on the host pipeline (which pipeline=auto may have chosen).
  """
  most = config.steps_per_dispatch
  if most == 'auto':
    return AUTO_STEPS_PER_DISPATCH if pipeline == 'device' else 1
  if most > 1 and pipeline == 'host':
    raise ConfigError(f'--config.steps_per_dispatch={most} needs the device pipeline, and '
                      f'--config.data.pipeline={config.data.pipeline} chose the host one for '
                      f'{config.data.name}; set --config.steps_per_dispatch=auto (or 1)')
  return most


def _chunk(step: int, most: int, config: ml_collections.ConfigDict) -> int:
  """How many steps the call after ``step`` runs: ``most`` where the next log, eval or checkpoint step (or the
  last one) is that far or farther, else 1, so that those happen exactly where they would one step at a time
  and a run compiles two programs (``most`` steps and one step), not one per remainder."""
  every = (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps)
  boundary = min([config.num_train_steps] + [(step // n + 1) * n for n in every])
  return most if boundary - step >= most else 1


# ---------------------------------------------------------------------------------------------------------
# A run's set-up.

@dataclasses.dataclass(frozen=True)
class Population:
  """Runs that train as one program (``--config.population``): configs that differ only in seed and peak
  learning rate, and the workdirs where each member leaves what a solo run of its config leaves (config.json,
  metrics.jsonl, TensorBoard events and the final checkpoint)."""
  configs: tuple[ml_collections.ConfigDict, ...]
  workdirs: tuple[str, ...]

  def check(self) -> None:
    """Raises ConfigError unless the members differ in seed and learning rate only, one workdir each."""
    first = self.configs[0]
    for config in self.configs[1:]:
      same = apply_overrides(config, {'seed': first.seed, 'optimizer.learning_rate': first.optimizer.learning_rate})
      if same != first:
        raise ConfigError('a population\'s members must differ in seed and learning rate only; train the others '
                          'with --config.population=off')
    if len(set(self.workdirs)) != len(self.configs):
      raise ConfigError('a population needs one workdir per member')

  def members(self) -> list[tuple[ml_collections.ConfigDict, str]]:
    """(config, workdir) of each member."""
    return list(zip(self.configs, self.workdirs, strict=True))


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run of ``config`` is made of, built once by ``setup``.

  Attributes:
    config: the experiment config.
    spec: the dataset's spec (``data.DATASETS``), resolved once here and passed on.
    builder: the TFDS builder (prepared unless ``setup(prepare=False)``); None when the device pipeline reads
      arrays written earlier (no TensorFlow).
    info: the model's input shape and output width.
    head: the task head.
    model: the Flax CNN.
    backend: how steps are mapped over devices and state and batches placed.
    schedule: the learning-rate schedule's shape (peak 1; the peak rate is in the optimizer state).
    tx: the optimizer.
    train_step: ``(state, batch, rng) -> (state, metrics)`` mapped over devices, the state donated.
    eval_step: ``(state, batch) -> metric sums`` mapped over devices.
    microbatch_size: the per-device micro-batch the train step uses (0: the whole batch).
    cpu_speedups: whether the model uses XLA:CPU's faster forms (see ``platform_choices``).
    pipeline: 'host' (tf.data batches fed to each step; needs TensorFlow) or 'device' (the splits on every
      device; each step makes its own batch: ``device_pipeline``).
    arrays: the device pipeline's data, host arrays {'train': {'image', 'target'}, 'test': ...} ('train' holds
      the training examples, then the validation ones); None for the host pipeline.
    num_examples: TFDS split name -> examples.
    steps_per_dispatch: the most training steps one call runs (``steps_per_dispatch``).
    step_fn: the unmapped train step, which ``train_steps`` runs several times per call.
    population: the members trained together (``Population``); None for a solo run. The steps then take and
      return every member's state stacked on a leading axis, and ``step_rng`` gives each member's keys.
  """
  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  builder: tfds.core.DatasetBuilder | None
  info: data.DataInfo
  head: heads.Head
  model: models.CNN
  backend: parallel.Backend
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  train_step: Callable[..., tuple[steps.TrainState, Metrics]]
  eval_step: Callable[..., Metrics]
  microbatch_size: int
  cpu_speedups: bool
  pipeline: str = 'host'
  arrays: dict[str, dict[str, np.ndarray]] | None = None
  num_examples: dict[str, int] = dataclasses.field(default_factory=dict)
  steps_per_dispatch: int = 1
  step_fn: Callable | None = None
  population: Population | None = None
  _multi: dict[int, Callable] = dataclasses.field(default_factory=dict, compare=False, repr=False)
  _placed: dict[str, PyTree] = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def placed(self, which: str) -> PyTree:
    """``arrays[which]`` on every device, placed once."""
    if which not in self._placed:
      self._placed[which] = self.backend.put_replicated(self.arrays[which])
    return self._placed[which]

  def keys(self) -> tuple[jax.Array, jax.Array]:
    """(init key, dropout key), split from the run's one root key ``config.seed``."""
    return steps.root_keys(self.config)

  def initial_state(self) -> steps.TrainState:
    """The run's fresh state in the checkpoint layout: ``init_state`` of its init key; for a population, the
    members' states stacked on a leading axis, each with its own seed's weights and its own learning rate."""
    if self.population is None:
      return self.init_state(self.keys()[0])
    states = []
    for config in self.population.configs:  # the model and optimizer are the members' own
      state = jax.tree.map(parallel.local_value, self.init_state(steps.root_keys(config)[0]))
      states.append(state.replace(opt_state=optim.with_learning_rate(state.opt_state,
                                                                     config.optimizer.learning_rate)))
    return self.backend.replicated(jax.tree.map(lambda *xs: np.stack(xs), *states))

  def step_rng(self) -> PyTree:
    """What the train steps take as ``rng``: the dropout key (``keys``); for a population, per member (stacked)
    its seed, its data key and its dropout key, the keys a solo run of that seed uses."""
    if self.population is None:
      return self.keys()[1]
    configs = self.population.configs
    return {'seed': np.array([c.seed for c in configs], np.uint32),
            'data': jnp.stack([steps.data_key(c) for c in configs]),
            'dropout': jnp.stack([steps.root_keys(c)[1] for c in configs])}

  def init_state(self, rng: jax.Array) -> steps.TrainState:
    """Fresh parameters and optimizer state, replicated over all devices (the checkpoint layout); place it
    for the steps with ``backend.from_checkpoint``."""
    x = jnp.zeros((1, *self.info.image_shape))
    variables = jax.jit(self.model.init, static_argnames='train')(rng, x, train=False)
    return self.backend.replicated(steps.TrainState.create(apply_fn=self.model.apply, params=variables['params'],
                                                     batch_stats=variables.get('batch_stats', {}), tx=self.tx))

  @property
  def target(self) -> input_pipeline.Target:
    """example -> target, as the head maps this dataset."""
    return self.head.target(self.builder.info.features, self.config.data)

  @property
  def host_pipeline(self):
    """The tf.data pipelines' module, imported when first used (it imports TensorFlow)."""
    from cnnjax import input_pipeline
    return input_pipeline

  def train_batches(self, start_step: int = 0, shard: input_pipeline.Shard | None = None,
                    num_devices: int | None = None) -> Iterator[input_pipeline.Batch]:
    """Training batches from ``start_step`` on, [local devices, per-device batch, ...] (see input_pipeline)."""
    return self.host_pipeline.train_iterator(self.config, self.spec, self.builder, self.target,
                                         num_devices or jax.local_device_count(), start_step, shard)

  @property
  def splits(self) -> data.Splits:
    """The TFDS split strings of train, validation (None when val_fraction is 0) and test."""
    return data.splits(self.config.data, self.builder)

  def eval_batches(self, split: str = 'test', num_devices: int | None = None) -> Iterable[input_pipeline.Batch]:
    """The 'val' or 'test' split, padded and masked (see input_pipeline)."""
    return self.host_pipeline.eval_batches(self.config, self.spec, self.builder, self.target,
                                       num_devices or jax.local_device_count(), getattr(self.splits, split))

  def train_steps(self, num_steps: int) -> Callable[..., tuple[steps.TrainState, Metrics]]:
    """``(state, data, rng) -> (state, metrics stacked over steps)``: ``num_steps`` train steps in one program
    (a ``lax.scan``), mapped over devices like ``train_step``; compiled once per ``num_steps``."""
    if num_steps == 1:
      return self.train_step
    if num_steps not in self._multi:
      multi = (functools.partial(self.step_fn, num_steps=num_steps) if self.population
               else functools.partial(steps.multi_step, step=self.step_fn, num_steps=num_steps))
      self._multi[num_steps] = self.backend.map_train_step(multi, self.pipeline == 'device')
    return self._multi[num_steps]

  def step_inputs(self, start_step: int) -> Callable[[], PyTree]:
    """What feeds each train step from ``start_step`` on, placed for the devices: the next host batch, or the
    device pipeline's arrays, placed once."""
    if self.pipeline == 'device':
      return lambda: self.placed('train')
    batches = self.train_batches(start_step)
    return lambda: self.backend.put_batch(next(batches))

  def evaluation(self, split: str) -> tuple[Iterable[PyTree], Callable[[steps.TrainState, PyTree], Metrics]]:
    """(host batches, eval function of (state, placed batch)) of the 'val' or 'test' split, for ``evaluate``."""
    if self.pipeline == 'host':
      return self.eval_batches(split), self.eval_step
    n_train, n_val, _ = data.split_sizes(self.config.data, self.num_examples)
    which = 'test' if split == 'test' else 'train'
    start, count = (0, len(self.arrays['test']['target'])) if split == 'test' else (n_train, n_val)
    batches = device_pipeline.eval_indices(start, count, self.config.eval_batch_size, *self.backend.eval_rows())
    return batches, lambda state, batch: self.eval_step(state, self.placed(which), batch)


def setup(config: ml_collections.ConfigDict, data_dir: str | None = None, prepare: bool = True,
          population: Population | None = None) -> Run:
  """Validates ``config`` and builds its run (nothing is compiled and nothing is written to a workdir).

  Args:
    config: the experiment config.
    data_dir: the TFDS data directory (None: tfds's default).
    prepare: prepare the data (generate or download it into data_dir). False: only the dataset's features
      are read, e.g. for synthetic batches or the analysis.
    population: train these members as one program (their configs are ``config`` but for seed and learning
      rate); it needs the device pipeline, whose batches each member makes from its own seed.

  Raises:
    ConfigError naming the flag for a config that cannot train; DataError for data that cannot be had or is
    damaged.
  """
  validate(config, jax.device_count())
  spec = data.get_spec(config.data.name)  # resolved once; the pipelines and the sweep take it from the Run
  if prepare and config.data.pipeline == 'host':
    data.check_host_pipeline(config.data)  # before anything is prepared
  head = heads.get_head(config.head)
  directory = arrays.location(config.data, data_dir)
  found = arrays.find(directory) if prepare and config.data.pipeline != 'host' else None
  if found:  # the device pipeline's arrays, written earlier: no TFDS builder, no TensorFlow
    builder = None
  elif prepare:
    builder = data.prepare(config.data, data_dir)
  else:
    builder = data.get_builder(config.data, data_dir)
  features = found.features if found else builder.info.features
  num_examples = found.num_examples if found else data.num_examples(builder)
  head.check(features, config.data)
  info = data.DataInfo(data.image_shape(config.data), head.num_outputs(features, config.data))
  if population is not None:  # a loop's members run on every device each, as their solo runs do
    backend = parallel.PopulationBackend(len(population.configs),
                                         shard_members=population_map(config, jax.default_backend()) == 'vmap')
  else:
    backend = parallel.get_backend(config.parallel)
  microbatch_size, cpu_speedups = platform_choices(config, backend.data_devices, jax.default_backend())
  schedule = optim.schedule(config.optimizer, config.num_train_steps)
  step = functools.partial(steps.train_step, head=head, schedule=schedule, microbatch_size=microbatch_size,
                           label_smoothing=config.label_smoothing)
  model = models.build_model(config.model, info.num_outputs, parallel.AXIS, cpu_speedups)
  evaluation = functools.partial(steps.eval_step, head=head, flip=config.eval_flip, translate=config.eval_translate)
  pipeline = data.pipeline(config.data, num_examples) if prepare else 'host'
  num_steps = steps_per_dispatch(config, pipeline) if prepare else 1  # unprepared: nothing trains, nothing to pick
  if prepare and pipeline == 'host' and config.data.pipeline == 'auto':  # an explicit host was checked above
    data.check_host_pipeline(config.data)
  if pipeline == 'host' and builder is None:  # auto chose the host pipeline for arrays too large for the device
    builder = data.prepare(config.data, data_dir)
  if population is not None:
    population.check()
    if config.rng_impl not in VMAP_INVARIANT_RNGS:
      raise ConfigError(f'--config.population=on needs random numbers that are the same for a member as for its solo '
                        f'run, which --config.rng_impl={config.rng_impl} does not give under vmap (every member '
                        'would draw from the first member\'s key): set --config.rng_impl=threefry2x32, or '
                        '--config.population=off')
    if pipeline != 'device' or config.test_checkpoint != 'last':
      raise ConfigError('--config.population=on trains members on the device pipeline and tests their last '
                        f'weights; --config.data.pipeline={config.data.pipeline} chose {pipeline} and '
                        f'--config.test_checkpoint={config.test_checkpoint}: set --config.population=off')
  host_arrays = None
  if pipeline == 'device':
    found = found or arrays.write(builder, directory)
    host_arrays, step, evaluation = _device_pipeline(config, spec, directory, found, head, step, evaluation,
                                                     backend.data_devices, population is not None)
  device = pipeline == 'device'
  return Run(config, spec, builder, info, head, model, backend, schedule, optim.create_tx(config, schedule),
             backend.map_train_step(step, device), backend.map_eval_step(evaluation, device), microbatch_size,
             cpu_speedups, pipeline, host_arrays, num_examples, num_steps, step, population)


def _device_pipeline(config: ml_collections.ConfigDict, spec: data.DatasetSpec, directory: str, found: arrays.Info,
                     head: heads.Head, step: Callable, evaluation: Callable, data_devices: int,
                     population: bool = False) -> tuple[dict, Callable, Callable]:
  """The device pipeline's host arrays and the train and eval steps that make their own batches from them, each
  step's batch split over ``data_devices`` (for a population, the steps of every member, each making its batches
  from its own seed)."""
  target = head.target_array(found.features, config.data)
  host = {}
  for name, split in (('train', spec.train_split), ('test', spec.test_split)):
    features = arrays.load(directory, split)
    host[name] = {'image': features['image'], 'target': target(features)}
  n_train, n_val, _ = data.split_sizes(config.data, found.num_examples)
  host['train'] = jax.tree.map(lambda x: x[:n_train + n_val], host['train'])
  d = config.data
  preprocess = device_pipeline.Preprocess(spec.mean, spec.std)
  augment = dataclasses.replace(preprocess, flip=d.augment_flip, crop_padding=d.crop_padding * d.augment_crop,
                                random_erasing=d.random_erasing)
  batches = functools.partial(  # (data, step, device, seed=, key=) -> batch
      device_pipeline.train_batch, num_train=n_train, batch_size=config.batch_size,
      per_device=config.batch_size // data_devices, preprocess=augment)
  evaluate = functools.partial(steps.device_eval_step, evaluation=evaluation,
                               make_batch=functools.partial(device_pipeline.eval_batch, preprocess=preprocess))
  if population:
    map_members = steps.MEMBER_MAPS[population_map(config, jax.default_backend())]
    return (host, functools.partial(steps.population_train_step, step=step, batches=batches, map_members=map_members),
            functools.partial(steps.population_eval_step, evaluation=evaluate, map_members=map_members))
  make_batch = functools.partial(batches, seed=config.seed, key=steps.data_key(config))
  return host, functools.partial(steps.device_train_step, step=step, make_batch=make_batch), evaluate






















def params_fingerprint(params: PyTree) -> str:
  """sha256 of this process's copy of the parameters' bytes: equal fingerprints mean bitwise-equal params."""
  digest = hashlib.sha256()
  for x in jax.tree.leaves(params):
    digest.update(parallel.local_value(x).tobytes())
  return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Steps (pure; run under pmap with axis_name=parallel.AXIS).









def evaluate(eval_fn: Callable, state: steps.TrainState, batches: Iterable[dict], backend: parallel.Backend,
             prefix: str, members: int = 0) -> dict[str, float]:
  """Mean metrics over one pass of ``batches``, named '<prefix>_<metric>' ('val_accuracy', 'test_loss', ...): floats,
  or for a population of ``members`` a vector over them.

  Each step is waited for before the next is dispatched: independent steps in flight at once can starve
  the in-process collectives of many (fake) CPU devices sharing few cores.
  """
  sums = [jax.block_until_ready(eval_fn(state, backend.put_batch(b))) for b in batches]
  read = functools.partial(parallel.per_member, members=members) if members else parallel.first
  totals = jax.tree.map(lambda *xs: sum(read(x) for x in xs), *sums)
  count = totals.pop('count')
  return {f'{prefix}_{k}': v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------------------
# The loop.

@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished run leaves its caller.

  Attributes:
    metrics: the final validation metrics ('val_loss', 'val_accuracy', ...; none when val_fraction is 0),
      the test metrics ('test_loss', 'test_accuracy', ...), 'num_params', and with test_checkpoint=best_val
      'selected_step', the step whose weights they are.
    variables: the tested model variables ({'params', 'batch_stats'}), host numpy arrays (this process's).
    start_step: the step the run started from: 0, or the checkpoint it resumed.
    run: the run's set-up (model, data, head, ...).
  """
  metrics: dict[str, float]
  variables: PyTree
  start_step: int
  run: Run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None,
                       overwrite: bool = False) -> TrainResult:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), evaluating on the validation split
  every ``eval_every_steps`` and at the end, and on the test split once, at the end: the last weights, or with
  ``test_checkpoint=best_val`` those of the best validation evaluation (with val_fraction 0, the periodic
  evaluations are on the test split).

  Args:
    config: the experiment config (see experiments/shapes.py for every field).
    workdir: where checkpoints, TensorBoard events, metrics.jsonl and config.json go.
    data_dir: TFDS data directory (None: tfds's default).
    overwrite: move a previous run in ``workdir`` aside instead of resuming it.

  Returns:
    The final metrics and variables, the start step and the run's set-up.

  Raises:
    Before anything is compiled or written: ConfigError for a config that cannot train or a workdir that holds
    another config's run, DataError for data that cannot be had or is damaged, WorkdirInUse while another
    process trains in the workdir. Later: StorageError when a write fails (full disk, read-only, no
    permission), naming the intact checkpoint; NonFiniteLoss if the loss becomes NaN/Inf (without
    skip_nonfinite); Preempted after saving a checkpoint on SIGTERM/SIGINT.
  """
  run = setup(config, data_dir)  # validates, then prepares and checks the data; writes nothing to the workdir
  return _in_workdir(run, workdir, overwrite)


def train_population(configs: list[ml_collections.ConfigDict], member_workdirs: list[str], workdir: str,
                     data_dir: str | None = None) -> list[bool]:
  """Trains the members ``configs`` (the same config but for seed and learning rate) as one program, each
  member's state on a leading axis of one state (``Population``; ``population_train_step``), its checkpoints in
  ``workdir``. Each member's workdir receives what a solo run of its config writes there while it trains
  (config.json, metrics.jsonl, events) and, at the end, its final checkpoint, so that ``train_and_evaluate`` of
  the member's config in its workdir resumes the finished run: it evaluates it and returns what a solo run
  would. A member whose loss becomes NaN/Inf gets no final checkpoint (its solo run will say so).

  Returns:
    Per member, whether it finished (False: its loss diverged).

  Raises:
    What ``train_and_evaluate`` raises; ConfigError for members that differ in more than seed and learning rate.
  """
  population = Population(tuple(configs), tuple(workdirs.resolve(d) for d in member_workdirs))
  run = setup(configs[0], data_dir, population=population)
  return _in_workdir(run, workdir, False)


def _in_workdir(run: Run, workdir: str, overwrite: bool) -> TrainResult | list[bool]:
  """``_train_and_evaluate`` in ``workdir`` (a population's members' workdirs too), locked, with failed writes
  turned into one line and SIGTERM/SIGINT into a checkpoint, after checking that the workdirs hold no other
  config's run."""
  workdir = workdirs.resolve(workdir)  # a symbolic link is resolved once: the run stays in its target's tree
  members = run.population.members() if run.population else []
  with contextlib.ExitStack() as stack:
    checkpoint_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)  # what is intact: asked when a write fails
    stack.enter_context(files.storage_errors('writing the run', lambda: checkpointing.intact(checkpoint_dir)))
    if jax.process_index() == 0:  # in a multi-host run, process 0 holds the workdirs
      for directory in [workdir, *(d for _, d in members)]:
        stack.enter_context(workdirs.WorkdirLock(directory))
    preemption = stack.enter_context(workdirs.PreemptionSignals())  # SIGTERM/SIGINT: save, then stop
    workdirs.check(run.config, workdir, overwrite)
    for config, directory in members:
      workdirs.check(config, directory, False)
    outcome = _train_and_evaluate(run, workdir, preemption)
    if preemption.requested is not None:  # it came after the last step (or while a finished run was evaluated):
      raise Preempted(run.config.num_train_steps, workdir)  # stop a sweep here too, not at its next run
    return outcome


def _start_writer(run: Run, workdir: str, start_step: int) -> writers.MultiWriter | writers.MemberWriters:
  """The run's writer from ``start_step`` on (a population's: one per member), after writing config.json and,
  on a fresh start, the hyper-parameters, to each workdir."""
  runs = run.population.members() if run.population else [(run.config, workdir)]
  members = []
  for config, directory in runs:
    members.append(writers.create_writer(directory, start_step))
    if jax.process_index() == 0:
      workdirs.write_config(config, directory)
    if start_step == 0:
      hparams = traverse_util.flatten_dict(config.to_dict(), sep='.')
      members[-1].write_hparams({k: v if isinstance(v, int | float | str | bool) else str(v)
                                 for k, v in hparams.items()})
  return writers.MemberWriters(members) if run.population else members[0]


def _train_and_evaluate(run: Run, workdir: str, preemption: workdirs.PreemptionSignals) -> TrainResult | list[bool]:
  config, backend = run.config, run.backend
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  best = (checkpointing.Checkpoints(workdir, checkpointing.BEST_CHECKPOINT_DIR, best=run.head.selection())
          if config.test_checkpoint == 'best_val' else None)
  template = run.initial_state()
  state = checkpoints.restore_latest(template)
  start_step = int(parallel.local_value(state.step).reshape(-1)[0])  # a population's members share the step
  if start_step:
    logging.info('Resumed from %s at step %d.', workdir, start_step)
  writer = _start_writer(run, workdir, start_step)
  num_params = _log_setup(run)
  members = len(run.population.configs) if run.population else 0
  state = backend.from_checkpoint(state)
  has_val = data.split_sizes(config.data, run.num_examples)[1] > 0
  periodic = 'val' if has_val else 'test'  # what the periodic evaluations (and any selection) see
  next_input, (eval_batches, eval_fn), test = run.step_inputs(start_step), run.evaluation(periodic), None
  if periodic != 'test' and not members:
    test = run.evaluation('test')  # built before training, evaluated once after it (a member's: by its solo run)
  report_progress = writers.Progress(config.num_train_steps, config.log_every_steps, writer, start_step)
  pending: list[tuple[int, Metrics]] = []
  eval_metrics: dict[str, float] = {}
  rng, diverged = run.step_rng(), set()
  try:
    step = start_step
    while step < config.num_train_steps:
      chunk = _chunk(step, run.steps_per_dispatch, config)
      state, metrics = run.train_steps(chunk)(state, next_input(), rng)
      step += chunk
      pending.append((step, metrics))
      if len(pending) > MAX_STEPS_IN_FLIGHT:  # bound the async queue without stalling the devices
        jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT - 1][1])
      report_progress(step)
      last, stop = step == config.num_train_steps, preemption.requested is not None
      save = step % config.checkpoint_every_steps == 0 or last or stop
      if step % config.log_every_steps == 0 or save:  # train metrics are checked before any save
        _write_train_metrics(writer, pending, config, checkpoints.latest_step(), run.population, diverged)
        pending = []
      if step % config.eval_every_steps == 0 or last:
        eval_metrics = evaluate(eval_fn, state, eval_batches, backend, periodic, members)
        writer.write_scalars(step, eval_metrics)
        if best is not None and step not in best.all_steps():  # orbax keeps the best of these only
          best.save(step, backend.to_checkpoint(state), metrics={k: float(v) for k, v in eval_metrics.items()})
      if save:
        checkpoints.save(step, backend.to_checkpoint(state))
      if stop:
        raise Preempted(step, workdir)
    if members:
      _save_members(run, backend.to_checkpoint(state), diverged)
      return [i not in diverged for i in range(members)]
    chosen = {}
    if best is not None:  # test the best weights by validation, not the last
      chosen = {'selected_step': best.best_step()}
      if chosen['selected_step'] != config.num_train_steps:  # the last weights are in hand, evaluated
        state = backend.from_checkpoint(best.restore(chosen['selected_step'], template))
        eval_metrics = {}
    if not eval_metrics:  # resumed a finished run, or chose an earlier checkpoint: evaluate what it left
      eval_metrics = evaluate(eval_fn, state, eval_batches, backend, periodic)
    variables = _test_once(run, state, test, writer, eval_metrics, {'num_params': num_params, **chosen})
  finally:  # however the loop ends, close what it opened; after a failure, a failing close is not news
    failing = sys.exc_info()[1] is not None
    for close in [m.close for m in (checkpoints, best) if m is not None] + [writer.flush, writer.close]:
      try:
        close()
      except Exception:  # noqa: BLE001
        if not failing:
          raise
  return TrainResult({**eval_metrics, 'num_params': num_params, **chosen}, variables, start_step, run)


def _log_setup(run: Run) -> int:
  """Logs the platform's choices and the model (its widths and per-layer table); returns its parameter count."""
  config, members = run.config, len(run.population.configs) if run.population else 0
  speedups = (['two-step bias', 'NHWC/HWIO conv gradients'] + ['two-step BatchNorm'] * models.batch_normed(config.model)
              + ['per-element max-pool gradient'] * (config.model.pool == 'max'))
  logging.info('Platform %s x%d: micro-batches of %s per device; CPU speed-ups %s%s.', jax.default_backend(),
               jax.device_count(), run.microbatch_size or 'the whole batch',
               f'on ({", ".join(speedups)})' if run.cpu_speedups else 'off',
               f'; {members} members trained as one program, mesh {dict(run.backend.mesh.shape)}' if members else '')
  image_shape = run.info.image_shape
  num_params = models.count_params(run.model, image_shape)
  logging.info('Model: %s; %s parameters.\n%s', analysis.widths(config.model, image_shape, run.info.num_outputs),
               f'{num_params:,}',
               analysis.format_table(analysis.analyze(config.model, image_shape, run.info.num_outputs)))
  return num_params


def _test_once(run: Run, state: steps.TrainState, test: tuple | None, writer: writers.MultiWriter,
               eval_metrics: dict[str, float], final: dict[str, float]) -> PyTree:
  """The test split, once, at the end (into ``eval_metrics``; ``test`` is None without a validation split, whose
  periodic evaluations were the test's), the ``final`` scalars written; returns the tested variables (host)."""
  step = run.config.num_train_steps
  if test is not None:
    test_metrics = evaluate(test[1], state, test[0], run.backend, 'test')
    writer.write_scalars(step, test_metrics)
    eval_metrics.update(test_metrics)
  writer.write_scalars(step, final)
  variables = jax.tree.map(parallel.local_value, run.backend.to_checkpoint(state).variables())
  logging.info('Process %d: final params fingerprint %s', jax.process_index(),
               params_fingerprint(variables['params']))
  return variables


def _save_members(run: Run, state: steps.TrainState, diverged: set[int]) -> None:
  """Each finished member's state (``state`` in the checkpoint layout, members stacked) as the final checkpoint
  in its own workdir, where its solo run will find it."""
  for i, directory in enumerate(run.population.workdirs):
    if i in diverged:
      continue
    member = run.backend.replicated(jax.tree.map(lambda x, i=i: parallel.local_value(x)[i], state))
    saver = checkpointing.Checkpoints(directory, keep=run.config.keep_checkpoints)
    try:
      saver.save(run.config.num_train_steps, member)
    finally:
      saver.close()


def _write_train_metrics(writer, pending: list[tuple[int, Metrics]], config: ml_collections.ConfigDict,
                         last_checkpoint: int | None, population: Population | None = None,
                         diverged: set[int] | None = None) -> None:
  """Writes the mean of the pending calls' metrics (one host sync); stops on a non-finite loss. ``pending`` holds
  (last step, metrics) of each call, its metrics stacked over the call's steps when it ran several, with a
  leading member axis for a ``population`` (``parallel.PopulationBackend``), whose member with a non-finite loss
  is added to ``diverged`` and written no more, instead of stopping the others."""
  members = len(population.configs) if population else 0
  metrics = [m for _, m in pending]
  local = (jax.tree.map(parallel.gathered, metrics) if members  # every member's, whichever devices hold it
           else jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), metrics)))  # one sync
  losses_by_member = []
  for member in range(max(members, 1)):
    if diverged and member in diverged:
      continue
    rows, numbers = [], []
    for (last, _), m in zip(pending, local, strict=True):
      values = {k: v.reshape(max(members, 1), -1)[member] for k, v in m.items()}  # one per step
      count = len(values['loss'])
      rows += [{k: float(v[i]) for k, v in values.items()} for i in range(count)]
      numbers += range(last - count + 1, last + 1)
    losses = np.array([r['loss'] for r in rows])
    bad = ~np.isfinite(losses)
    if bad.any() and not config.skip_nonfinite:
      step = numbers[int(bad.argmax())]
      if members:
        member_config = population.configs[member]
        logging.warning('Member %d (seed %d, learning rate %g): the training loss is %s at step %d; it trains on '
                        'with the others but gets no final checkpoint.', member, member_config.seed,
                        member_config.optimizer.learning_rate, losses[bad][0], step)
        diverged.add(member)
        writer.drop(member)
        continue
      kept = (f'the last good checkpoint is step {last_checkpoint} (kept)' if last_checkpoint is not None
              else 'no checkpoint was written yet')
      raise NonFiniteLoss(f'the training loss is {losses[bad][0]} at step {step}; {kept}. Lower '
                          '--config.optimizer.learning_rate, clip with --config.optimizer.grad_clip_norm, or skip '
                          'such updates with --config.skip_nonfinite=True')
    scalars = {f'train_{k}': np.mean([r[k] for r, b in zip(rows, bad, strict=True) if not b] or [np.nan])
               for k in rows[0]}
    scalars = {**scalars, 'train_skipped_steps': int(bad.sum())} if bad.any() else scalars
    (writer.member(member) if members else writer).write_scalars(pending[-1][0], scalars, log=not members)
    losses_by_member.append(scalars['train_loss'])
  if members and losses_by_member:
    logging.info('[%d] %d members: train_loss=%.4g..%.4g', pending[-1][0], len(losses_by_member),
                 min(losses_by_member), max(losses_by_member))
