"""Training and evaluation: a pure per-device train step, the loop, checkpoints and metrics.

``train_step`` and ``eval_step`` are pure functions of (state, batch[, rng]) on one device's shard, with
collectives over ``parallel.AXIS``; hyper-parameters are bound with ``functools.partial`` and the step is
mapped over devices by ``--config.parallel``: ``jax.pmap`` (default) or ``jax.jit`` of ``jax.shard_map``.
Everything with side effects (data, logging, checkpoints) stays in ``train_and_evaluate``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import parameter_overview, periodic_actions
from flax import traverse_util
from flax.training import train_state
from jax.experimental import multihost_utils

from cnnjax import checkpointing, heads, input_pipeline, models, parallel, writers

TrainState = train_state.TrainState
Metrics = dict[str, jax.Array]

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
# Steps dispatched ahead of the host. Unbounded queues of collectives time out XLA:CPU's in-process
# all-reduce with many fake devices on few cores; two steps ahead keeps real accelerators busy.
MAX_STEPS_IN_FLIGHT = 2
MAX_SKIPPED_STEPS = 100  # skip_nonfinite: after this many consecutive non-finite steps, updates apply again
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'warmup_constant')
RNG_IMPLS = ('rbg', 'threefry2x32', 'unsafe_rbg')


# ---------------------------------------------------------------------------------------------------------
# Optimizer.

def create_learning_rate_fn(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning-rate schedule of ``config.optimizer`` over ``num_steps``."""
  lr, warmup = opt.learning_rate, opt.warmup_steps
  if opt.schedule == 'constant':
    return optax.constant_schedule(lr)
  if opt.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, num_steps)
  if opt.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def create_optimizer(opt: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
                     ) -> optax.GradientTransformation:
  """sgd / momentum / adam / adamw, after global-norm gradient clipping when grad_clip_norm > 0."""
  tx = {'sgd': lambda: optax.sgd(learning_rate_fn),
        'momentum': lambda: optax.sgd(learning_rate_fn, momentum=opt.momentum, nesterov=opt.nesterov),
        'adam': lambda: optax.adam(learning_rate_fn),
        'adamw': lambda: optax.adamw(learning_rate_fn, weight_decay=opt.weight_decay)}[opt.name]()
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx) if opt.grad_clip_norm > 0 else tx


def create_tx(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The run's optimizer; with config.skip_nonfinite, updates with non-finite gradients are skipped."""
  tx = create_optimizer(config.optimizer, create_learning_rate_fn(config.optimizer, config.num_train_steps))
  return optax.apply_if_finite(tx, max_consecutive_errors=MAX_SKIPPED_STEPS) if config.skip_nonfinite else tx


def create_train_state(config: ml_collections.ConfigDict, model: models.CNN, image_shape: tuple[int, ...],
                       rng: jax.Array) -> TrainState:
  """Initial parameters and optimizer state (on the host's default device)."""
  params = jax.jit(model.init, static_argnames='train')(rng, jnp.zeros((1, *image_shape)), train=False)['params']
  return TrainState.create(apply_fn=model.apply, params=params, tx=create_tx(config))


def params_fingerprint(params) -> str:
  """sha256 of this process's copy of the parameters' bytes: equal fingerprints mean bitwise-equal params."""
  digest = hashlib.sha256()
  for x in jax.tree.leaves(params):
    digest.update(parallel.local_value(x).tobytes())
  return digest.hexdigest()[:16]


def count_params(model: models.CNN, image_shape: tuple[int, ...]) -> int:
  """Number of trainable parameters, from shapes alone (``jax.eval_shape``, no FLOPs spent)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


# ---------------------------------------------------------------------------------------------------------
# Steps (pure; run under pmap with axis_name=parallel.AXIS).

def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, head: heads.Head,
               learning_rate_fn: optax.Schedule, microbatch_size: int = 0,
               axis_name: str = parallel.AXIS) -> tuple[TrainState, Metrics]:
  """One SGD step on this device's shard of the batch; gradients and metrics are averaged over devices.

  Args:
    state: the (per-device) train state.
    batch: {'image': [B, H, W, C], 'target': [B, ...]}.
    rng: the run's root key for dropout; the step and the device index are folded in here.
    head: the task's loss and metrics.
    learning_rate_fn: the schedule, only to report the current learning rate.
    microbatch_size: if it is > 0 and < B (and divides B), the gradient is summed over consecutive
      micro-batches of this many examples, computed one after another: the same gradient up to float
      rounding, with activations small enough to stay in cache on CPU.
    axis_name: the device axis to average over.

  Returns:
    The updated state and {'loss', task metrics, 'grad_norm', 'learning_rate'}.
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(axis_name))
  # Parameters typed as varying over the devices: each device's gradient stays its own until the pmean below
  # (JAX would otherwise sum it at each use of a replicated parameter, which ops.conv2d's custom VJP cannot).
  params = jax.lax.pcast(state.params, axis_name, to='varying')
  grads, outputs = _accumulated_grads(state.replace(params=params), batch, rng, head, microbatch_size)
  grads = jax.lax.pmean(grads, axis_name)
  metrics = {k: v.mean() for k, v in head.metrics(outputs, batch['target']).items()}
  metrics = jax.lax.pmean(metrics, axis_name)
  metrics.update(grad_norm=optax.global_norm(grads), learning_rate=learning_rate_fn(state.step))
  return state.apply_gradients(grads=grads), metrics


def _accumulated_grads(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, head: heads.Head,
                       microbatch_size: int) -> tuple[Any, jax.Array]:
  """Gradient of the batch's mean loss and the model's outputs, summed over micro-batches by a ``lax.scan``:
  its body is traced and compiled once, however many micro-batches the batch holds."""
  n = len(batch['image'])
  if not 0 < microbatch_size < n:
    return _grads(state, batch['image'], batch['target'], jax.random.fold_in(rng, 0), head, n)
  chunks = jax.tree.map(lambda x: x.reshape(n // microbatch_size, microbatch_size, *x.shape[1:]),
                        {'image': batch['image'], 'target': batch['target']})

  def body(grads, chunk):
    g, out = _grads(state, chunk['image'], chunk['target'], jax.random.fold_in(rng, chunk['index']), head, n)
    return jax.tree.map(jnp.add, grads, g), out

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  grads, outputs = jax.lax.scan(body, zeros, {**chunks, 'index': jnp.arange(n // microbatch_size)})
  return grads, outputs.reshape(n, *outputs.shape[2:])


def _grads(state: TrainState, images: jax.Array, targets: jax.Array, rng: jax.Array, head: heads.Head,
           batch_size: int) -> tuple[Any, jax.Array]:
  """Gradient of these examples' share of the batch's mean loss (their loss sum / batch_size), and the model's
  outputs; summed over the micro-batches it is the gradient of the batch's mean loss."""
  def loss_fn(params):
    outputs = state.apply_fn({'params': params}, images, train=True, rngs={'dropout': rng})
    return head.loss(outputs, targets).sum() / batch_size, outputs
  return jax.grad(loss_fn, has_aux=True)(state.params)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, head: heads.Head,
              axis_name: str = parallel.AXIS) -> Metrics:
  """Sums of the task metrics over the real (mask=True) examples of the batch, over all devices.

  Returns:
    {metric: sum over examples, 'count': number of examples}; divide to get means.
  """
  outputs = state.apply_fn({'params': state.params}, batch['image'], train=False)
  mask = batch['mask'].astype(jnp.float32)
  sums = {k: (v * mask).sum() for k, v in head.metrics(outputs, batch['target']).items()}
  return jax.lax.psum({**sums, 'count': mask.sum()}, axis_name)


def make_steps(backend: parallel.Backend, head: heads.Head, learning_rate_fn: optax.Schedule,
               microbatch_size: int = 0) -> tuple[Callable, Callable]:
  """The train step (state donated, rng broadcast) and eval step, mapped over devices by ``backend``."""
  step = functools.partial(train_step, head=head, learning_rate_fn=learning_rate_fn, microbatch_size=microbatch_size)
  return (backend.map_train_step(step),
          backend.map_eval_step(functools.partial(eval_step, head=head)))


def evaluate(eval_fn: Callable, state: TrainState, batches: Iterable[dict], backend: parallel.Backend
             ) -> dict[str, float]:
  """Mean metrics over one pass of ``batches``, with 'eval_' names.

  Each step is waited for before the next is dispatched: independent steps in flight at once can starve
  the in-process collectives of many (fake) CPU devices sharing few cores.
  """
  sums = [jax.block_until_ready(eval_fn(state, backend.put_batch(b))) for b in batches]
  totals = jax.tree.map(lambda *xs: sum(parallel.first(x) for x in xs), *sums)
  count = totals.pop('count')
  return {f'eval_{k}': v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------------------
# Config validation (pure: no I/O, nothing compiled).

class ConfigError(ValueError):
  """A config that cannot train; the message names the flag and the fix."""


class NonFiniteLoss(FloatingPointError):
  """The training loss became NaN or Inf; no checkpoint of the bad state was written."""


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises one ConfigError naming the flag and the fix for any setting that cannot train.

  Args:
    config: the experiment config.
    num_devices: all devices taking part (global), which must divide the batch sizes.
  """
  try:
    _validate(config, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  heads.get_head(config.head)
  input_pipeline.image_size(config.data)  # checks the dataset name and image size
  for flag in ('batch_size', 'eval_batch_size'):
    if config[flag] < 1 or config[flag] % num_devices:
      raise ValueError(f'--config.{flag}={config[flag]} must be a positive multiple of the {num_devices} devices; '
                       f'use e.g. --config.{flag}={max(1, round(config[flag] / num_devices)) * num_devices}')
  _validate_microbatch_size(config.microbatch_size, config.batch_size, num_devices)
  for flag in ('num_train_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints'):
    if config[flag] < 1:
      raise ValueError(f'--config.{flag}={config[flag]} must be >= 1')
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ValueError(f'--config.optimizer.name={opt.name!r} is unknown; choose one of {OPTIMIZERS}')
  if opt.schedule not in SCHEDULES:
    raise ValueError(f'--config.optimizer.schedule={opt.schedule!r} is unknown; choose one of {SCHEDULES}')
  if opt.learning_rate <= 0:
    raise ValueError(f'--config.optimizer.learning_rate={opt.learning_rate} must be > 0')
  parallel.get_backend(config.parallel)
  if config.rng_impl not in RNG_IMPLS:
    raise ValueError(f'--config.rng_impl={config.rng_impl!r} is unknown; choose one of {RNG_IMPLS}')
  models.validate_model_config(config.model)
  h, w, c = model_input_shape(config)
  models.layer_shapes(models.block_specs(config.model), h, w, c)


def _validate_microbatch_size(size: int, batch_size: int, num_devices: int) -> None:
  if size < 0:
    raise ValueError(f'--config.microbatch_size={size} must be >= 0 (0 = the whole per-device batch at once)')
  per_device = batch_size // num_devices
  if 0 < size < per_device and per_device % size:
    divisor = max(d for d in range(1, size) if per_device % d == 0)
    raise ValueError(f'--config.microbatch_size={size} must divide the per-device batch of {per_device} '
                     f'(--config.batch_size={batch_size} over {num_devices} device{"s" * (num_devices > 1)}); use e.g. '
                     f'--config.microbatch_size={divisor}, or 0 for no micro-batches')


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the model sees."""
  size = input_pipeline.image_size(config.data)
  return size, size, input_pipeline.get_spec(config.data.name).channels


def prepare_data(config: ml_collections.ConfigDict, data_dir: str | None):
  """The prepared TFDS builder (generating offline datasets on first use) and the DataInfo.

  Raises:
    ConfigError for a data_dir that is not a usable directory, a dataset the task cannot use, or a download
    that does not finish within config.data.download_timeout_s (no internet), with advice.
  """
  if data_dir and (os.path.exists(data_dir) and not os.path.isdir(data_dir)
                   or os.path.isdir(data_dir) and not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK)):
    raise ConfigError(f'--data_dir={data_dir} is not a readable and writable directory; point it at one')
  builder = input_pipeline.get_builder(config.data, data_dir)
  if jax.process_index() == 0 and not builder.is_prepared():
    _download_and_prepare(builder, config)
  if jax.process_count() > 1:  # the others wait for process 0, then prepare only if they see no data
    multihost_utils.sync_global_devices('cnnjax: data prepared by process 0')
    builder = input_pipeline.get_builder(config.data, data_dir)
    if not builder.is_prepared():  # a host without the shared filesystem: deterministic, so the same data
      _download_and_prepare(builder, config)
  try:
    input_pipeline.validate_data_config(config, builder)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return builder, input_pipeline.data_info(config, builder)


def _download_and_prepare(builder, config: ml_collections.ConfigDict) -> None:
  """Runs builder.download_and_prepare(), giving up after config.data.download_timeout_s for downloads.

  tfds retries a failing download for a long time; offline, that is a hang. The download runs in a daemon
  thread so that a timeout can end the run with advice instead.
  """
  if input_pipeline.get_spec(config.data.name).offline:
    builder.download_and_prepare()  # generated locally: no network, no timeout
    return
  errors: list[BaseException] = []

  def target():
    try:
      builder.download_and_prepare()
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
      errors.append(e)

  thread = threading.Thread(target=target, daemon=True, name='tfds-download')
  thread.start()
  thread.join(config.data.download_timeout_s)
  if thread.is_alive():
    raise ConfigError(
        f'--config.data.name={config.data.name} is not in --data_dir={builder.data_dir_root} and downloading it '
        f'did not finish in {config.data.download_timeout_s} s (no internet?). Download it once on a machine with '
        'internet into that --data_dir (python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{config.data.name}', data_dir='DIR').download_and_prepare()\"), raise "
        '--config.data.download_timeout_s, or use an offline dataset: --config.data.name=shapes or digits')
  if errors:
    raise errors[0]


# ---------------------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None,
                       overwrite: bool = False) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates on the test split.

  Args:
    config: the experiment config (see experiments/shapes.py for every field).
    workdir: where checkpoints, TensorBoard events, metrics.jsonl and config.json go.
    data_dir: TFDS data directory (None: tfds's default).
    overwrite: move a previous run in ``workdir`` aside instead of resuming it.

  Returns:
    The final eval metrics, e.g. {'eval_loss': ..., 'eval_accuracy': ..., 'num_params': ...}.

  Raises:
    ConfigError before anything is compiled or written, for a config that cannot train or a workdir that
    holds another config's run; NonFiniteLoss if the loss becomes NaN/Inf (without skip_nonfinite);
    checkpointing.Preempted after saving a checkpoint on SIGTERM/SIGINT.
  """
  validate_config(config, jax.device_count())
  with checkpointing.PreemptionSignals() as preemption:  # from here on, SIGTERM/SIGINT stop the run cleanly
    return _train_and_evaluate(config, workdir, data_dir, overwrite, preemption)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None, overwrite: bool,
                        preemption: checkpointing.PreemptionSignals) -> dict[str, float]:
  try:
    checkpointing.check_workdir(config, workdir, overwrite)
  except checkpointing.WorkdirMismatch as e:
    raise ConfigError(str(e)) from None
  builder, info = prepare_data(config, data_dir)
  head = heads.get_head(config.head)
  model = models.build_model(config.model, info.num_outputs)
  backend = parallel.get_backend(config.parallel)
  learning_rate_fn = create_learning_rate_fn(config.optimizer, config.num_train_steps)

  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed, impl=config.rng_impl))
  state = create_train_state(config, model, info.image_shape, init_rng)
  state = backend.replicated(state)
  checkpoints = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints))
  state = checkpointing.restore_latest(checkpoints, state, workdir)
  start_step = int(state.step)
  if start_step:
    logging.info('Resumed from %s at step %d.', workdir, start_step)
  writer = writers.create_writer(workdir)
  if jax.process_index() == 0:
    checkpointing.write_config(config, workdir)
  if start_step == 0:
    hparams = traverse_util.flatten_dict(config.to_dict(), sep='.')
    writer.write_hparams({k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()})
  num_params = count_params(model, info.image_shape)
  logging.info('Model: %s parameters.\n%s\n%s', f'{num_params:,}', parameter_overview.get_parameter_overview(
      state.params), model.tabulate(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False))

  train_fn, eval_fn = make_steps(backend, head, learning_rate_fn, config.microbatch_size)
  state = backend.from_checkpoint(state)
  train_iter = input_pipeline.train_iterator(config, builder, jax.local_device_count(), start_step)
  eval_batches = input_pipeline.eval_batches(config, builder, jax.local_device_count())
  report_progress = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                                    every_steps=config.log_every_steps)
  pending: list[tuple[int, Metrics]] = []
  eval_metrics: dict[str, float] = {}
  try:
    for step in range(start_step + 1, config.num_train_steps + 1):
      state, metrics = train_fn(state, backend.put_batch(next(train_iter)), dropout_rng)
      pending.append((step, metrics))
      if len(pending) > MAX_STEPS_IN_FLIGHT:  # bound the async queue without stalling the devices
        jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT - 1][1])
      report_progress(step, time.time())
      last, stop = step == config.num_train_steps, preemption.requested is not None
      save = step % config.checkpoint_every_steps == 0 or last or stop
      if step % config.log_every_steps == 0 or save:  # train metrics are checked before any save
        _write_train_metrics(writer, pending, config, checkpoints.latest_step())
        pending = []
      if step % config.eval_every_steps == 0 or last:
        eval_metrics = evaluate(eval_fn, state, eval_batches, backend)
        writer.write_scalars(step, eval_metrics)
      if save:
        checkpoints.save(step, args=ocp.args.StandardSave(backend.to_checkpoint(state)), force=True)
      if stop:
        raise checkpointing.Preempted(step, workdir)
    if not eval_metrics:  # resumed a finished run: evaluate what it left
      eval_metrics = evaluate(eval_fn, state, eval_batches, backend)
    writer.write_scalars(config.num_train_steps, {'num_params': num_params})
    logging.info('Process %d: final params fingerprint %s', jax.process_index(),
                 params_fingerprint(backend.to_checkpoint(state).params))
  finally:  # however the loop ends, finish the checkpoints already started
    checkpoints.wait_until_finished()
    checkpoints.close()
    writer.flush()
    writer.close()
  return {**eval_metrics, 'num_params': num_params}


def _write_train_metrics(writer, pending: list[tuple[int, Metrics]], config: ml_collections.ConfigDict,
                         last_checkpoint: int | None) -> None:
  """Writes the mean of the pending steps' metrics (one host sync); stops on a non-finite loss."""
  local = jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), [m for _, m in pending]))  # one sync
  rows = [{k: parallel.first(v) for k, v in m.items()} for m in local]
  losses = np.array([r['loss'] for r in rows])
  bad = ~np.isfinite(losses)
  if bad.any() and not config.skip_nonfinite:
    step = pending[int(bad.argmax())][0]
    raise NonFiniteLoss(f'the training loss is {losses[bad][0]} at step {step}; the last good checkpoint is step '
                        f'{last_checkpoint} (kept). Lower --config.optimizer.learning_rate, clip with '
                        '--config.optimizer.grad_clip_norm, or skip such updates with --config.skip_nonfinite=True')
  scalars = {f'train_{k}': np.mean([r[k] for r, b in zip(rows, bad, strict=True) if not b] or [np.nan])
             for k in rows[0]}
  writer.write_scalars(pending[-1][0], {**scalars, 'train_skipped_steps': int(bad.sum())} if bad.any() else scalars)
