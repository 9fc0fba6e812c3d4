"""Training: a run's set-up, once (``setup``), and a solo run's driver (``train_and_evaluate``).

``setup(config, data_dir)`` builds everything a run needs, for the loop, the sweeps, the benchmarks and the
tests: the data's pipeline (``pipelines``), the head, the model, the back-end, the schedule, the mapped steps and
the initial state. The steps themselves are pure functions in ``steps.py``, bound here with ``functools.partial``,
wrapped by the pipeline and mapped over devices by ``--config.parallel`` (``jax.pmap``, default, or ``jax.jit`` of
``jax.shard_map``). ``train_and_evaluate`` restores, runs the one loop (``loop.train``) with a solo run's hooks and
tests once; a population's driver is ``population.train_population``. Everything with side effects (logging,
evaluation passes, checkpoints, signals) stays in the drivers and the hooks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from cnnjax import (
  analysis,
  budgets,
  checkpointing,
  data,
  device_pipeline,
  files,
  heads,
  loop,
  models,
  optim,
  parallel,
  pipelines,
  records,
  steps,
  workdirs,
  writers,
)
from cnnjax.config import apply_overrides, largest_divisor, validate_run
from cnnjax.errors import ConfigError

Metrics, PyTree = steps.Metrics, steps.PyTree


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
  budgets.validate(config)
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


# ---------------------------------------------------------------------------------------------------------
# A run's set-up.

@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run of ``config`` is made of, built once by ``setup``.

  Attributes:
    config: the experiment config.
    spec: the dataset's spec (``data.DATASETS``), resolved once here and passed on.
    pipeline: how data enters the steps (``pipelines.Pipeline``: host or device); None for ``setup(prepare=False)``.
    info: the model's input shape and output width.
    head: the task head.
    model: the Flax CNN.
    backend: how steps are mapped over devices and state and batches placed.
    schedule: the learning-rate schedule's shape (peak 1; the peak rate is in the optimizer state).
    tx: the optimizer.
    train_step: ``(state, inputs, rng) -> (state, metrics)`` mapped over devices, the state donated.
    eval_step: ``(state, inputs...) -> metric sums`` mapped over devices.
    microbatch_size: the per-device micro-batch the train step uses (0: the whole batch).
    cpu_speedups: whether the model uses XLA:CPU's faster forms (see ``platform_choices``).
    steps_per_dispatch: the most training steps one call runs (``steps_per_dispatch``).
    step_fn: the unmapped train step (the pipeline's), which ``train_steps`` runs several times per call.
    members: the configs of a population's members (differing from ``config`` in seed and learning rate only),
      trained as one program; () for a solo run. The steps then take and return every member's state stacked on
      a leading axis, and ``step_rng`` gives each member's keys.
  """
  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  pipeline: pipelines.Pipeline | None
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
  steps_per_dispatch: int = 1
  step_fn: Callable | None = None
  members: tuple[ml_collections.ConfigDict, ...] = ()
  _multi: dict[int, Callable] = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def keys(self) -> tuple[jax.Array, jax.Array]:
    """(init key, dropout key), split from the run's one root key ``config.seed``."""
    return steps.root_keys(self.config)

  def initial_state(self) -> steps.TrainState:
    """The run's fresh state in the checkpoint layout: ``init_state`` of its init key; for a population, the
    members' states stacked on a leading axis, each with its own seed's weights and its own learning rate."""
    if not self.members:
      return self.init_state(self.keys()[0])
    states = []
    for config in self.members:  # the model and optimizer are the members' own
      state = jax.tree.map(parallel.local_value, self.init_state(steps.root_keys(config)[0]))
      states.append(state.replace(opt_state=optim.with_learning_rate(state.opt_state,
                                                                     config.optimizer.learning_rate)))
    return self.backend.replicated(jax.tree.map(lambda *xs: np.stack(xs), *states))

  def step_rng(self) -> PyTree:
    """What the train steps take as ``rng``: the dropout key (``keys``); for a population, per member (stacked)
    its seed, its data key and its dropout key, the keys a solo run of that seed uses."""
    if not self.members:
      return self.keys()[1]
    return {'seed': np.array([c.seed for c in self.members], np.uint32),
            'data': jnp.stack([steps.data_key(c) for c in self.members]),
            'dropout': jnp.stack([steps.root_keys(c)[1] for c in self.members])}

  def init_state(self, rng: jax.Array) -> steps.TrainState:
    """Fresh parameters and optimizer state, replicated over all devices (the checkpoint layout); place it
    for the steps with ``backend.from_checkpoint``."""
    x = jnp.zeros((1, *self.info.image_shape))
    variables = jax.jit(self.model.init, static_argnames='train')(rng, x, train=False)
    return self.backend.replicated(steps.TrainState.create(apply_fn=self.model.apply, params=variables['params'],
                                                           batch_stats=variables.get('batch_stats', {}), tx=self.tx))

  def train_steps(self, num_steps: int) -> Callable[..., tuple[steps.TrainState, Metrics]]:
    """``(state, inputs, rng) -> (state, metrics stacked over steps)``: ``num_steps`` train steps in one program
    (a ``lax.scan``), mapped over devices like ``train_step``; compiled once per ``num_steps``."""
    if num_steps == 1:
      return self.train_step
    if num_steps not in self._multi:
      multi = (functools.partial(self.step_fn, num_steps=num_steps) if self.members
               else functools.partial(steps.multi_step, step=self.step_fn, num_steps=num_steps))
      self._multi[num_steps] = self.backend.map_train_step(multi, self.pipeline.replicated_input)
    return self._multi[num_steps]


def setup(config: ml_collections.ConfigDict, data_dir: str | None = None, prepare: bool = True,
          members: Sequence[ml_collections.ConfigDict] = ()) -> Run:
  """Validates ``config`` and builds its run (nothing is compiled and nothing is written to a workdir).

  Args:
    config: the experiment config.
    data_dir: the TFDS data directory (None: tfds's default).
    prepare: prepare the data (generate or download it into data_dir) and pick its pipeline. False: only the
      dataset's features are read, e.g. for the analysis; the run has no pipeline and trains nothing.
    members: train these configs (``config`` but for seed and learning rate) as one population; it needs the
      device pipeline, whose batches each member makes from its own seed.

  Raises:
    ConfigError naming the flag for a config that cannot train; DataError for data that cannot be had or is
    damaged.
  """
  validate(config, jax.device_count())
  spec, head, members = data.get_spec(config.data), heads.get_head(config.head), tuple(members)
  mapping = population_map(config, jax.default_backend()) if members else None
  if members:  # a loop's members run on every device each, as their solo runs do
    _check_population(config, members)
    backend = parallel.PopulationBackend(len(members), shard_members=mapping == 'vmap')
  else:
    backend = parallel.get_backend(config.parallel)
  pipeline = pipelines.build(config, spec, head, backend, data_dir) if prepare else None
  spec = pipeline.spec if pipeline else spec  # with the statistics measured when the data was prepared
  features = pipeline.features if pipeline else data.features(config.data, data_dir)
  head.check(features, config.data)
  info = data.DataInfo(data.image_shape(config.data), head.num_outputs(features, config.data))
  num_steps = steps_per_dispatch(config, pipeline.name) if pipeline else 1  # unprepared: nothing trains
  if members and (pipeline is None or pipeline.name != 'device' or config.test_checkpoint != 'last'):
    raise ConfigError('--config.population=on trains members on the device pipeline and tests their last '
                      f'weights; --config.data.pipeline={config.data.pipeline} chose '
                      f'{pipeline.name if pipeline else "none"} and --config.test_checkpoint={config.test_checkpoint}: '
                      'set --config.population=off')
  microbatch_size, cpu_speedups = platform_choices(config, backend.data_devices, jax.default_backend())
  schedule = optim.schedule(config.optimizer, config.num_train_steps)
  step = functools.partial(steps.train_step, head=head, schedule=schedule, microbatch_size=microbatch_size,
                           label_smoothing=config.label_smoothing)
  evaluation = functools.partial(steps.eval_step, head=head, flip=config.eval_flip, translate=config.eval_translate)
  if pipeline:
    step, evaluation = pipeline.train_step(step, mapping), pipeline.eval_step(evaluation, mapping)
  replicated = bool(pipeline and pipeline.replicated_input)
  return Run(config, spec, pipeline, info, head, models.build_model(config.model, info.num_outputs, parallel.AXIS,
                                                                   cpu_speedups),
             backend, schedule, optim.create_tx(config, schedule), backend.map_train_step(step, replicated),
             backend.map_eval_step(evaluation, replicated), microbatch_size, cpu_speedups, num_steps, step, members)


# PRNGs whose draws under jax.vmap equal the draws of each key alone (rbg's batching rule draws every key's bits
# from the first key), so that a population's member equals its solo run.
VMAP_INVARIANT_RNGS = ('threefry2x32',)


def _check_population(config: ml_collections.ConfigDict, members: tuple[ml_collections.ConfigDict, ...]) -> None:
  """Raises ConfigError unless the members differ from ``config`` in seed and learning rate only, with random
  numbers that are the same for a member as for its solo run."""
  for member in members:
    if apply_overrides(member, {'seed': config.seed, 'optimizer.learning_rate': config.optimizer.learning_rate}
                       ) != config:
      raise ConfigError('a population\'s members must differ in seed and learning rate only; train the others '
                        'with --config.population=off')
  if config.rng_impl not in VMAP_INVARIANT_RNGS:
    raise ConfigError(f'--config.population=on needs random numbers that are the same for a member as for its solo '
                      f'run, which --config.rng_impl={config.rng_impl} does not give under vmap (every member '
                      'would draw from the first member\'s key): set --config.rng_impl=threefry2x32, or '
                      '--config.population=off')


def params_fingerprint(params: PyTree) -> str:
  """sha256 of this process's copy of the parameters' bytes: equal fingerprints mean bitwise-equal params."""
  digest = hashlib.sha256()
  for x in jax.tree.leaves(params):
    digest.update(parallel.local_value(x).tobytes())
  return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# A solo run's driver.

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
                       overwrite: bool = False, until: int | None = None) -> TrainResult | None:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), evaluating on the validation split
  every ``eval_every_steps`` and at the end, and on the test split once, at the end: the last weights, or with
  ``test_checkpoint=best_val`` those of the best validation evaluation (with val_fraction 0, the periodic
  evaluations are on the test split).

  Args:
    config: the experiment config (see experiments/shapes.py for every field).
    workdir: where checkpoints, TensorBoard events, metrics.jsonl and config.json go.
    data_dir: TFDS data directory (None: tfds's default).
    overwrite: move a previous run in ``workdir`` aside instead of resuming it.
    until: train only to this step (before num_train_steps), save it and return None: a later call goes on from
      there (a sweep's successive halving trains its runs budget by budget).

  The run's compiled programs are dropped when it returns (``jax.clear_caches``), so that a process may train
  any number of runs.

  Returns:
    The final metrics and variables, the start step and the run's set-up; None with ``until``.

  Raises:
    Before anything is compiled or written: ConfigError for a config that cannot train or a workdir that holds
    another config's run, DataError for data that cannot be had or is damaged, WorkdirInUse while another
    process trains in the workdir. Later: StorageError when a write fails (full disk, read-only, no
    permission), naming the intact checkpoint; NonFiniteLoss if the loss becomes NaN/Inf (without
    skip_nonfinite); Preempted after saving a checkpoint on SIGTERM/SIGINT.
  """
  run = setup(config, data_dir)  # validates, then prepares and checks the data; writes nothing to the workdir
  workdir = workdirs.resolve(workdir)  # a symbolic link is resolved once: the run stays in its target's tree
  try:
    with workdirs.held(run.config, workdir, overwrite) as preemption:
      result = _train_and_evaluate(run, workdir, preemption, until)
  finally:  # each run compiles its own programs; kept, a sweep's hundreds of runs exhaust the process's memory
    jax.clear_caches()  # maps (vm.max_map_count) and LLVM aborts the process. The disk cache makes recompiling cheap
  return _shorter_budgets(result, workdir, data_dir) if config.budgets and result else result


def _shorter_budgets(result: TrainResult, workdir: str, data_dir: str | None) -> TrainResult:
  """``result`` (the longest budget's run) with every budget's validation and test metrics as
  '<budget=f>/<metric>', after training each shorter budget's cooldown from the state the run handed it
  (``budgets``)."""
  config = result.run.config

  def keyed(fraction: float, metrics: dict[str, float]) -> dict[str, float]:
    return {f'{budgets.label(fraction)}/{k}': v for k, v in metrics.items() if k.startswith(('val_', 'test_'))}
  metrics = {**result.metrics, **keyed(1.0, result.metrics)}
  for fraction in budgets.shorter(config):
    logging.info('Budget %g (%d steps): its cooldown, from step %d.', fraction, budgets.steps(config, fraction),
                 budgets.branch_step(config, fraction))
    branch = train_and_evaluate(budgets.branch_config(config, fraction), budgets.branch_dir(workdir, fraction),
                                data_dir)
    metrics.update(keyed(fraction, branch.metrics))
  return dataclasses.replace(result, metrics=metrics)


def start_writer(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> writers.MultiWriter:
  """The run's writer from ``start_step`` on, after writing config.json and, on a fresh start, the
  hyper-parameters to ``workdir``."""
  writer = writers.create_writer(workdir, start_step)
  if jax.process_index() == 0:
    workdirs.write_config(config, workdir)
  if start_step == 0:
    hparams = traverse_util.flatten_dict(config.to_dict(), sep='.')
    writer.write_hparams({k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()})
  return writer


def restore(run: Run, checkpoints: checkpointing.Checkpoints, workdir: str) -> tuple[steps.TrainState, int]:
  """The latest checkpoint's state (or a fresh one) in the checkpoint layout, and its step."""
  state = checkpoints.restore_latest(run.initial_state())
  start_step = int(parallel.local_value(state.step).reshape(-1)[0])  # a population's members share the step
  if start_step:
    logging.info('Resumed from %s at step %d.', workdir, start_step)
  return state, start_step


def _train_and_evaluate(run: Run, workdir: str, preemption: workdirs.PreemptionSignals, until: int | None = None
                        ) -> TrainResult | None:
  """The solo run: restore, the loop with a solo run's hooks, the selection of the tested weights, the test (not
  before num_train_steps: with ``until`` short of it, None once the state there is saved)."""
  config, backend = run.config, run.backend
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  best = (checkpointing.Checkpoints(workdir, checkpointing.BEST_CHECKPOINT_DIR, best=run.head.selection())
          if config.test_checkpoint == 'best_val' else None)
  state, start_step = restore(run, checkpoints, workdir)
  writer = start_writer(config, workdir, start_step)
  if jax.process_index() == 0:  # what the trained model needs to classify raw images (predict.load)
    files.write_json(os.path.join(workdir, records.DATA_FILE), data_record(run).to_json())
  with files.closing(*[m.close for m in (checkpoints, best) if m is not None], writer.flush, writer.close):
    num_params = log_setup(run)
    periodic = loop.Evaluation(run, periodic_split(run), writer, best=best)  # what any selection sees
    test = (loop.Evaluation(run, 'test', writer) if periodic.split != 'test'  # built before training, run once after
            else None)
    progress = writers.Progress(config.num_train_steps, config.log_every_steps, writer, start_step)
    metrics = loop.TrainMetrics([writer], loop.stop_on_nonfinite(checkpoints), config.skip_nonfinite,
                                loop.read_first_device)  # checked before any save
    hooks = [lambda at, *_: progress(at.step), metrics, periodic, loop.checkpoint(checkpoints, backend)]
    hooks += [budgets.Seeder(config, workdir, backend)] if config.budgets else []
    end = config.num_train_steps if until is None else min(until, config.num_train_steps)
    state = backend.from_checkpoint(state)
    if start_step < end:  # a run already past ``until`` (or finished) trains nothing more here
      state = loop.train(run, state, start_step, hooks, preemption, workdir, end)
    if end < config.num_train_steps:
      return None
    chosen, eval_metrics = {}, periodic.latest
    if best is not None:  # test the best weights by validation, not the last
      chosen = {'selected_step': best.best_step()}
      if chosen['selected_step'] != config.num_train_steps:  # the last weights are in hand, evaluated
        state = backend.from_checkpoint(best.restore(chosen['selected_step'], run.initial_state()))
        eval_metrics = {}
    eval_metrics = dict(eval_metrics or periodic.evaluate(state))  # resumed a finished run, or chose an earlier one
    if test is not None:
      test.latest = test.evaluate(state)
      writer.write_scalars(config.num_train_steps, test.latest)
      eval_metrics.update(test.latest)
    final = {'num_params': num_params, **chosen}
    writer.write_scalars(config.num_train_steps, final)
    variables = jax.tree.map(parallel.local_value, backend.to_checkpoint(state).variables())
    logging.info('Process %d: final params fingerprint %s', jax.process_index(),
                 params_fingerprint(variables['params']))
  return TrainResult({**eval_metrics, **final}, variables, start_step, run)


def periodic_split(run: Run) -> str:
  """The split the periodic evaluations (and any choice made on them) see: 'val', or 'test' without one."""
  return 'val' if data.split_sizes(run.config.data, run.pipeline.num_examples)[1] > 0 else 'test'


def data_record(run: Run) -> records.DataRecord:
  """The run's ``records.DataRecord``: its input size and normalisation, its head and its classes' names."""
  config, outputs = run.config, run.info.num_outputs
  labels = run.pipeline.features['label'] if 'label' in run.pipeline.features else None
  names = (run.pipeline.classes or tuple(str(i) for i in range(labels.num_classes))) if labels else ()
  if config.head == 'binary' and len(names) != 2:  # label == positive_class against the rest
    names = (f'not {names[config.data.positive_class]}', names[config.data.positive_class])
  return records.DataRecord(config.data.name, run.info.image_shape[0], bool(config.data.grayscale),
                            tuple(run.spec.mean), tuple(run.spec.std), config.head, outputs,
                            names if config.head != 'regression' else ())


def log_setup(run: Run) -> int:
  """Logs the platform's choices and the model (its widths and per-layer table); returns its parameter count."""
  config, members = run.config, len(run.members)
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
