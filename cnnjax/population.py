"""Populations: the runs of one config that differ only in seed and peak learning rate (a sweep point's seeds x
its learning-rate grid), trained as one program by the one loop (``loop.train``) with a population's hooks.

Each member's state lies on a leading axis of one state (``parallel.PopulationBackend``; the member map is
``train.population_map``'s). Each member's workdir receives what a solo run of its config writes there while it
trains (config.json, metrics.jsonl, events) and, at the end, its final checkpoint, so that
``train.train_and_evaluate`` of the member's config in its workdir resumes the finished run: it evaluates it and
returns what a solo run would.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from absl import logging

from cnnjax import checkpointing, files, loop, parallel, steps, train, workdirs, writers
from cnnjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PopulationResult:
  """What a population's driver leaves its caller: per member, whether it finished (False: its loss diverged and it
  got no final checkpoint), and the step the population started from."""
  finished: tuple[bool, ...]
  start_step: int


def population_on(config: ml_collections.ConfigDict, platform: str) -> bool:
  """Whether a sweep trains a point's runs as one population on ``platform``: ``--config.population``, with
  auto = on for GPU/TPU where the runs can be (threefry2x32, the device pipeline, the last weights tested, one
  budget), off on CPU, where vmapped convolutions run slower per member than one run's
  (benchmarks/population.py)."""
  if config.population != 'auto':
    return config.population == 'on'
  return (platform != 'cpu' and config.rng_impl in train.VMAP_INVARIANT_RNGS and config.data.pipeline != 'host'
          and config.test_checkpoint == 'last' and not config.budgets)


def train_population(configs: list[ml_collections.ConfigDict], member_workdirs: list[str], workdir: str,
                     data_dir: str | None = None) -> PopulationResult:
  """Trains the members ``configs`` (the same config but for seed and learning rate) as one program, its
  checkpoints in ``workdir`` and each member's records in its own workdir. A member whose loss becomes NaN/Inf
  trains on with the others but is written no more and gets no final checkpoint (its solo run will say so).

  Raises:
    What ``train.train_and_evaluate`` raises; ConfigError for members that differ in more than seed and learning
    rate, or with more than one workdir each.
  """
  if len(set(member_workdirs)) != len(configs):
    raise ConfigError('a population needs one workdir per member')
  run = train.setup(configs[0], data_dir, members=configs)
  member_dirs = [workdirs.resolve(d) for d in member_workdirs]
  workdir = workdirs.resolve(workdir)
  with workdirs.held(run.config, workdir, False, list(zip(configs, member_dirs, strict=True))) as preemption:
    checkpoints = checkpointing.Checkpoints(workdir, keep=run.config.keep_checkpoints)
    state, start_step = train.restore(run, checkpoints, workdir)
    writer = writers.MemberWriters([train.start_writer(c, d, start_step)
                                    for c, d in zip(configs, member_dirs, strict=True)])
    with files.closing(checkpoints.close, writer.flush, writer.close):
      train.log_setup(run)
      metrics = loop.TrainMetrics([writer.member(i) for i in range(len(configs))], _drop(run, writer),
                                  run.config.skip_nonfinite, lambda ms: jax.tree.map(parallel.gathered, ms),
                                  summary=loop.log_population)
      progress = writers.Progress(run.config.num_train_steps, run.config.log_every_steps, writer, start_step)
      periodic = loop.Evaluation(run, train.periodic_split(run), writer, members=len(configs))
      hooks = [lambda at, *_: progress(at.step), metrics, periodic, loop.checkpoint(checkpoints, run.backend)]
      state = loop.train(run, run.backend.from_checkpoint(state), start_step, hooks, preemption, workdir)
      _save_members(run, member_dirs, run.backend.to_checkpoint(state), metrics.dropped)
  return PopulationResult(tuple(i not in metrics.dropped for i in range(len(configs))), start_step)


def _drop(run: train.Run, writer: writers.MemberWriters) -> loop.NonFinitePolicy:
  """A population's NaN policy: the member whose loss is not finite is dropped (written no more), the others go on."""
  def policy(member: int, step: int, loss: float) -> bool:
    config = run.members[member]
    logging.warning('Member %d (seed %d, learning rate %g): the training loss is %s at step %d; it trains on '
                    'with the others but gets no final checkpoint.', member, config.seed,
                    config.optimizer.learning_rate, loss, step)
    writer.drop(member)
    return False
  return policy


def _save_members(run: train.Run, member_dirs: list[str], state: steps.TrainState, dropped: set[int]) -> None:
  """Each finished member's state (``state`` in the checkpoint layout, members stacked) as the final checkpoint
  in its own workdir, where its solo run will find it."""
  for i, directory in enumerate(member_dirs):
    if i in dropped:
      continue
    member = run.backend.replicated(jax.tree.map(lambda x, i=i: parallel.local_value(x)[i], state))
    saver = checkpointing.Checkpoints(directory, keep=run.config.keep_checkpoints)
    try:
      saver.save(run.config.num_train_steps, member)
    finally:
      saver.close()
