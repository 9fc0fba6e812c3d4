"""The one training loop, for a solo run and a population alike: it dispatches train calls and, after each,
hands every periodic action (progress, train metrics and the NaN policy, evaluation and best-validation
checkpoints, checkpoints, preemption) the moment it has reached (``At``). The actions are hooks: what differs
between a solo run and a population is which hooks and which NaN policy its driver passes, not branches here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging

from cnnjax import budgets, checkpointing, parallel, workdirs
from cnnjax.errors import NonFiniteLoss, Preempted

Metrics, PyTree = dict[str, Any], Any

# Steps dispatched ahead of the host. Unbounded queues of collectives time out XLA:CPU's in-process
# all-reduce with many fake devices on few cores; two steps ahead keeps real accelerators busy.
MAX_STEPS_IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class At:
  """The step the loop has reached after a call, and what is due there."""
  step: int
  log: bool  # write the train metrics (at every log step and before every save)
  evaluate: bool
  save: bool
  stop: bool  # a preemption signal came: save, then stop


class Hook(Protocol):
  def __call__(self, at: At, state: PyTree, metrics: Metrics) -> None: ...


def chunk(step: int, most: int, config: ml_collections.ConfigDict, end: int | None = None) -> int:
  """How many steps the call after ``step`` runs: ``most`` where the next log, eval, checkpoint or budget branch
  step (or the last one) is that far or farther, else 1, so that those happen exactly where they would one step
  at a time and a run compiles two programs (``most`` steps and one step), not one per remainder."""
  every = (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps)
  branches = [s for s in budgets.branch_steps(config) if s > step]
  boundary = min([config.num_train_steps, end or config.num_train_steps] + [(step // n + 1) * n for n in every]
                 + branches)
  return most if boundary - step >= most else 1


def _at(step: int, config: ml_collections.ConfigDict, stop: bool) -> At:
  last = step == config.num_train_steps
  save = step % config.checkpoint_every_steps == 0 or last or stop
  return At(step, step % config.log_every_steps == 0 or save, step % config.eval_every_steps == 0 or last, save, stop)


def train(run, state: PyTree, start_step: int, hooks: Sequence[Hook], preemption: workdirs.PreemptionSignals,
          workdir: str, end: int | None = None) -> PyTree:
  """Trains ``run`` (``train.Run``) from ``state`` at ``start_step`` to ``config.num_train_steps`` (or to ``end``
  before it, where the state is logged and saved as at a checkpoint step, to go on later), calling each hook
  after each call; returns the last state.

  Raises:
    Preempted after the hooks saved a checkpoint, when a preemption signal came; what a hook raises.
  """
  config = run.config
  next_input, rng, in_flight = run.pipeline.train_inputs(start_step), run.step_rng(), []
  step, end = start_step, config.num_train_steps if end is None else end
  while step < end:
    size = chunk(step, run.steps_per_dispatch, config, end)
    state, metrics = run.train_steps(size)(state, next_input(), rng)
    step += size
    in_flight = [*in_flight, metrics][-MAX_STEPS_IN_FLIGHT - 1:]
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:  # bound the async queue without stalling the devices
      jax.block_until_ready(in_flight[0])
    at = _at(step, config, preemption.requested is not None)
    at = dataclasses.replace(at, log=True, save=True) if step == end else at
    for hook in hooks:
      hook(at, state, metrics)
    if at.stop:
      raise Preempted(step, workdir)
  return state


def evaluate(eval_fn: Callable, state: PyTree, batches: Iterable[dict], backend: parallel.Backend,
             prefix: str, members: int = 0) -> dict[str, Any]:
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


class Evaluation:
  """Hook: evaluates ``split`` at every eval step and writes it; keeps the best-validation checkpoints when
  ``best`` is given (``test_checkpoint=best_val``). ``latest`` holds the last evaluation's metrics."""

  def __init__(self, run, split: str, writer, members: int = 0, best: checkpointing.Checkpoints | None = None):
    self.batches, self.fn = run.pipeline.evaluation(split, run.eval_step)
    self.run, self.split, self.writer, self.members, self.best = run, split, writer, members, best
    self.latest: dict[str, Any] = {}

  def evaluate(self, state: PyTree) -> dict[str, Any]:
    return evaluate(self.fn, state, self.batches, self.run.backend, self.split, self.members)

  def __call__(self, at: At, state: PyTree, metrics: Metrics) -> None:
    if not at.evaluate:
      return
    self.latest = self.evaluate(state)
    self.writer.write_scalars(at.step, self.latest)
    if self.best is not None and at.step not in self.best.all_steps():  # orbax keeps the best of these only
      self.best.save(at.step, self.run.backend.to_checkpoint(state),
                     metrics={k: float(v) for k, v in self.latest.items()})


def checkpoint(checkpoints: checkpointing.Checkpoints, backend: parallel.Backend) -> Hook:
  """Hook: saves the state at every save step (checkpoint steps, the last step and on preemption)."""
  def hook(at: At, state: PyTree, metrics: Metrics) -> None:
    if at.save:
      checkpoints.save(at.step, backend.to_checkpoint(state))
  return hook


NonFinitePolicy = Callable[[int, int, float], bool]  # (member, step, loss) -> write this member on (False: drop)


def stop_on_nonfinite(checkpoints: checkpointing.Checkpoints) -> NonFinitePolicy:
  """A solo run's policy: a non-finite training loss stops the run (NonFiniteLoss), naming the intact checkpoint."""
  def policy(member: int, step: int, loss: float) -> bool:
    last = checkpoints.latest_step()
    kept = f'the last good checkpoint is step {last} (kept)' if last is not None else 'no checkpoint was written yet'
    raise NonFiniteLoss(f'the training loss is {loss} at step {step}; {kept}. Lower '
                        '--config.optimizer.learning_rate, clip with --config.optimizer.grad_clip_norm, or skip '
                        'such updates with --config.skip_nonfinite=True')
  return policy


class TrainMetrics:
  """Hook: gathers each call's train metrics and, at log steps, writes their mean per member (one host sync),
  after applying the NaN policy: with ``skip_nonfinite`` the non-finite steps are left out and counted, else
  ``policy`` decides (a solo run stops; a population drops the member). ``writers`` holds one writer per member
  (a solo run: one); a call's metrics have a leading member axis when there are several."""

  def __init__(self, writers: Sequence, policy: NonFinitePolicy, skip_nonfinite: bool, read: Callable,
               summary: Callable[[int, list[float]], None] | None = None):
    self.writers, self.policy, self.skip, self.read, self.summary = list(writers), policy, skip_nonfinite, read, summary
    self.dropped: set[int] = set()
    self.pending: list[tuple[int, Metrics]] = []

  def __call__(self, at: At, state: PyTree, metrics: Metrics) -> None:
    self.pending.append((at.step, metrics))
    if at.log:
      self.flush()

  def _rows(self, local: list[Metrics], member: int) -> tuple[list[dict[str, float]], list[int]]:
    """Member ``member``'s metrics of each pending step, and the steps' numbers."""
    rows, numbers = [], []
    for (last, _), m in zip(self.pending, local, strict=True):
      values = {k: np.asarray(v).reshape(len(self.writers), -1)[member] for k, v in m.items()}  # one per step
      count = len(values['loss'])
      rows += [{k: float(v[i]) for k, v in values.items()} for i in range(count)]
      numbers += range(last - count + 1, last + 1)
    return rows, numbers

  def flush(self) -> None:
    local, step, losses = self.read([m for _, m in self.pending]), self.pending[-1][0], []
    for member, writer in enumerate(self.writers):
      if member in self.dropped:
        continue
      rows, numbers = self._rows(local, member)
      bad = ~np.isfinite([r['loss'] for r in rows])
      if bad.any() and not self.skip:
        first = int(bad.argmax())
        if not self.policy(member, numbers[first], rows[first]['loss']):
          self.dropped.add(member)
          continue
      scalars = {f'train_{k}': np.mean([r[k] for r, b in zip(rows, bad, strict=True) if not b] or [np.nan])
                 for k in rows[0]}
      scalars = {**scalars, 'train_skipped_steps': int(bad.sum())} if bad.any() else scalars
      writer.write_scalars(step, scalars, log=self.summary is None)
      losses.append(scalars['train_loss'])
    if self.summary is not None and losses:
      self.summary(step, losses)
    self.pending = []


def read_first_device(metrics: list[Metrics]) -> list[Metrics]:
  """A solo run's metrics as host arrays, from the first local device (every device holds them): one sync."""
  return jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), metrics))


def log_population(step: int, losses: list[float]) -> None:
  logging.info('[%d] %d members: train_loss=%.4g..%.4g', step, len(losses), min(losses), max(losses))
