"""The pure per-device steps that ``train.setup`` binds and maps over the devices: one SGD step, several in one
program, evaluation sums, the pipelines' steps (the host's, which augments the raw batch it is handed; the
device's, which makes its own batch), and a population's steps
over its members. Each is a pure function of (state, batch or data[, rng]) on one device's shard, with
collectives over ``parallel.AXIS``; hyper-parameters come bound with ``functools.partial``. Nothing here has a
side effect.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from cnnjax import heads, ops, optim, parallel

Metrics = dict[str, jax.Array]
PyTree = Any
Loss = Callable[[jax.Array, jax.Array], jax.Array]  # (outputs, targets) -> per-example loss


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the model's batch statistics (BatchNorm's running averages; {} without them)."""
  batch_stats: PyTree

  def variables(self, params: PyTree = None) -> dict[str, PyTree]:
    """The model's variables: ``params`` (default: the state's) and the batch statistics."""
    return {'params': self.params if params is None else params, 'batch_stats': self.batch_stats}


DATA_KEY = 0xDA7A  # folded into the root key for the device pipeline's augmentation


def root_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(init key, dropout key), split from one root key, ``config.seed``."""
  return tuple(jax.random.split(jax.random.key(config.seed, impl=config.rng_impl)))


def data_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The device pipeline's augmentation key of ``config.seed``."""
  return jax.random.fold_in(jax.random.key(config.seed, impl=config.rng_impl), DATA_KEY)


def device_train_step(state: TrainState, data: PyTree, rng: jax.Array, *, step: Callable, make_batch: Callable
                      ) -> tuple[TrainState, Metrics]:
  """``step`` on the batch that ``make_batch`` makes from the device's ``data`` for this step and device."""
  return step(state, make_batch(data, state.step, jax.lax.axis_index(parallel.AXIS)), rng)


def host_train_step(state: TrainState, batch: PyTree, rng: jax.Array, *, step: Callable, augment: Callable
                    ) -> tuple[TrainState, Metrics]:
  """``step`` on a host batch of raw images, augmented and normalised by ``augment(images, positions)``."""
  return step(state, {'image': augment(batch['image'], batch['position']), 'target': batch['target']}, rng)


def host_eval_step(state: TrainState, batch: PyTree, *, evaluation: Callable, normalize: Callable) -> Metrics:
  """``evaluation`` on a host batch of raw images, normalised by ``normalize``."""
  return evaluation(state, {**batch, 'image': normalize(batch['image'])})


def loop_map(fn: Callable) -> Callable:
  """``fn`` mapped over the leading axis of its arguments like ``jax.vmap``, but unrolled: one copy of ``fn`` per
  member, one after another in the same program, each the solo run's own computation, so on CPU its values are
  its solo run's to the last bit (``jax.vmap``'s batched convolutions sum in another order, and ``jax.lax.map``'s
  loop body compiles differently inside the steps' scan). Compile time grows with the members."""
  def mapped(*args):
    count = len(jax.tree.leaves(args)[0])
    outs = [fn(*jax.tree.map(lambda x, i=i: x[i], args)) for i in range(count)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  return mapped


MEMBER_MAPS = {'vmap': jax.vmap, 'loop': loop_map}  # config.population_map


def population_train_step(state: TrainState, data: PyTree, members: PyTree, *, step: Callable, batches: Callable,
                          map_members: Callable = jax.vmap, num_steps: int = 1) -> tuple[TrainState, Metrics]:
  """``num_steps`` calls of ``device_train_step`` (``multi_step`` for several) of every member, mapped over the
  leading axis of ``state`` and ``members`` by ``map_members`` (``jax.vmap`` or ``loop_map``), each on the
  batches of its own seed and data key, with its own dropout key. The member map is outermost, so that under
  ``loop_map`` each member runs the very program of its solo run. Each scalar metric becomes [members] (one step)
  or [members, steps]."""
  def member(state, keys):
    make_batch = functools.partial(batches, seed=keys['seed'], key=keys['data'])
    one = functools.partial(device_train_step, step=step, make_batch=make_batch)
    if num_steps == 1:
      return one(state, data, keys['dropout'])
    return multi_step(state, data, keys['dropout'], step=one, num_steps=num_steps)
  return map_members(member)(state, members)


def population_eval_step(state: TrainState, data: PyTree, batch: PyTree, *, evaluation: Callable,
                         map_members: Callable = jax.vmap) -> Metrics:
  """``evaluation`` of every member's state on the same batch; each metric sum becomes a vector over members."""
  return map_members(lambda s: evaluation(s, data, batch))(state)


def multi_step(state: TrainState, data: PyTree, rng: jax.Array, *, step: Callable, num_steps: int
               ) -> tuple[TrainState, Metrics]:
  """``num_steps`` calls of ``step(state, data, rng)`` in one program (a ``lax.scan``); the metrics are stacked on
  a leading axis. The device pipeline makes each step's batch from the step count, so ``data`` is the same."""
  return jax.lax.scan(lambda s, _: step(s, data, rng), state, None, length=num_steps)


def device_eval_step(state: TrainState, data: PyTree, batch: PyTree, *, evaluation: Callable, make_batch: Callable
                     ) -> Metrics:
  """``evaluation`` on the examples ``batch`` names (indices and mask) of the device's ``data``."""
  return evaluation(state, make_batch(data, batch))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, head: heads.Head,
               schedule: optax.Schedule, microbatch_size: int = 0, label_smoothing: float = 0.0,
               axis_name: str = parallel.AXIS) -> tuple[TrainState, Metrics]:
  """One SGD step on this device's shard of the batch; gradients and metrics are averaged over devices.

  Args:
    state: the (per-device) train state.
    batch: {'image': [B, H, W, C], 'target': [B, ...]}.
    rng: the run's root key for dropout; the step and the device index are folded in here.
    head: the task's loss and metrics.
    schedule: the learning-rate schedule's shape, only to report the current learning rate.
    microbatch_size: if it is > 0 and < B (and divides B), the gradient is summed over consecutive
      micro-batches of this many examples, computed one after another: the same gradient up to float
      rounding, with activations small enough to stay in cache on CPU.
    label_smoothing: the loss's targets are smoothed by this much (the reported metrics are not).
    axis_name: the device axis to average over.

  Returns:
    The updated state and {'loss', task metrics, 'grad_norm', 'learning_rate'}.
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(axis_name))
  # Parameters typed as varying over the devices: each device's gradient stays its own until the pmean below
  # (JAX would otherwise sum it at each use of a replicated parameter, which ops.conv2d's custom VJP cannot).
  params = jax.lax.pcast(state.params, axis_name, to='varying')
  loss = functools.partial(head.loss, label_smoothing=label_smoothing)
  grads, outputs, batch_stats = _accumulated_grads(state.replace(params=params), batch, rng, loss, microbatch_size)
  grads = jax.lax.pmean(grads, axis_name)
  metrics = {k: v.mean() for k, v in head.metrics(outputs, batch['target']).items()}
  metrics = jax.lax.pmean(metrics, axis_name)
  metrics.update(grad_norm=optax.global_norm(grads),
                 learning_rate=optim.learning_rate(state.opt_state, schedule, state.step))
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def _accumulated_grads(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, loss: Loss,
                       microbatch_size: int) -> tuple[PyTree, jax.Array, PyTree]:
  """Gradient of the batch's mean loss, the model's outputs and the updated batch statistics, summed over
  micro-batches by a ``lax.scan``: its body is traced and compiled once, however many micro-batches the batch
  holds. (Models with batch statistics take the whole batch: ``validate`` refuses micro-batches for them.)"""
  n = len(batch['image'])
  if not 0 < microbatch_size < n:
    return _grads(state, batch['image'], batch['target'], jax.random.fold_in(rng, 0), loss, n)
  chunks = jax.tree.map(lambda x: x.reshape(n // microbatch_size, microbatch_size, *x.shape[1:]),
                        {'image': batch['image'], 'target': batch['target']})

  def body(grads, chunk):
    g, out, _ = _grads(state, chunk['image'], chunk['target'], jax.random.fold_in(rng, chunk['index']), loss, n)
    return jax.tree.map(jnp.add, grads, g), out

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  grads, outputs = jax.lax.scan(body, zeros, {**chunks, 'index': jnp.arange(n // microbatch_size)})
  return grads, outputs.reshape(n, *outputs.shape[2:]), state.batch_stats


def _grads(state: TrainState, images: jax.Array, targets: jax.Array, rng: jax.Array, loss: Loss,
           batch_size: int) -> tuple[PyTree, jax.Array, PyTree]:
  """Gradient of these examples' share of the batch's mean loss (their loss sum / batch_size), the model's
  outputs and its updated batch statistics; summed over the micro-batches it is the gradient of the batch's
  mean loss."""
  def loss_fn(params):
    outputs, updates = state.apply_fn(state.variables(params), images, train=True, rngs={'dropout': rng},
                                      mutable=['batch_stats'])
    return loss(outputs, targets).sum() / batch_size, (outputs, updates.get('batch_stats', {}))
  grads, (outputs, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  return grads, outputs, batch_stats


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, head: heads.Head, flip: bool = False,
              translate: int = 0, axis_name: str = parallel.AXIS) -> Metrics:
  """Sums of the task metrics over the real (mask=True) examples of the batch, over all devices, for the
  evaluated weights (``optim.eval_params``: the moving average where the optimizer keeps one).

  With ``flip`` (``--config.eval_flip``), the outputs are the mean of the model's outputs on each image and on
  its left-right mirror (test-time augmentation for models trained with flips). With ``translate`` > 0
  (``--config.eval_translate``), they are half those of the image plus a quarter of those of each of its shifts
  by that many pixels down-right and up-left (``ops.shift_reflect``), each flipped too under ``flip``.

  Returns:
    {metric: sum over examples, 'count': number of examples}; divide to get means.
  """
  variables = state.variables(optim.eval_params(state.opt_state, state.params))

  def view(images):
    out = state.apply_fn(variables, images, train=False)
    return (out + state.apply_fn(variables, images[:, :, ::-1], train=False)) / 2 if flip else out

  outputs = view(batch['image'])
  if translate:
    shifted = [view(ops.shift_reflect(batch['image'], t)) for t in (translate, -translate)]
    outputs = outputs / 2 + (shifted[0] + shifted[1]) / 4
  mask = batch['mask'].astype(jnp.float32)
  sums = {k: (v * mask).sum() for k, v in head.metrics(outputs, batch['target']).items()}
  return jax.lax.psum({**sums, 'count': mask.sum()}, axis_name)
