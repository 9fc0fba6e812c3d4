"""Data parallelism on JAX's own runtime: two back-ends for one per-device step, and multi-host start-up.

The train and eval steps are written once, per device, with collectives over the axis ``AXIS``. A back-end
maps them over devices and places data:

- ``pmap`` (default): ``jax.pmap`` over the local devices; the state carries a leading device axis and batches
  are [local devices, per-device batch, ...].
- ``shard_map``: ``jax.jit`` of ``jax.shard_map`` over a 1-D mesh of all devices; the state is replicated
  (``P()``) and a batch is one global array sharded on its first axis.

A population (members stacked on a leading axis, ``train.Population``) always runs on ``PopulationBackend``: a
``jax.jit`` of ``jax.shard_map`` over a 2-D mesh (``MEMBER_AXIS``, ``AXIS``), the members sharded over the first
axis and each member's batch over the second.

Checkpoints hold the state replicated over the mesh of all devices, whichever back-end wrote them.
Placement uses ``jax.device_put`` with shardings, ``jax.make_array_from_process_local_data`` and
``jax.make_array_from_callback``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnnjax.config import check_choice

AXIS = 'batch'  # the data-parallel axis name used in every collective
MEMBER_AXIS = 'member'  # a population's member axis (PopulationBackend); no collective runs over it
BACKENDS = ('pmap', 'shard_map')

PyTree = Any


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run with ``jax.distributed.initialize``.

  With no arguments JAX detects the cluster (SLURM, TPU pods, Kubernetes...); on CPU, collectives use gloo.
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info('Process %d of %d; %d local / %d global devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices, in pmap's order."""
  return Mesh(np.array(jax.local_devices()), (AXIS,))


def global_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.array(jax.devices()), (AXIS,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """One copy of every leaf per device of ``mesh``, stacked on a new leading axis (pmap's layout)."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(local_value(x), (mesh.size, *np.shape(x))),
                                               sharding), tree)


def shard(batch: PyTree, mesh: Mesh) -> PyTree:
  """Places a [devices, per-device batch, ...] host batch with slice i on device i."""
  return jax.device_put(batch, NamedSharding(mesh, P(AXIS)))


def local_value(x: Any) -> np.ndarray:
  """A host copy of this process's first shard of ``x`` (the whole value for replicated arrays)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def first(x: Any) -> float:
  """The value of a metric that every device holds (pmap: one per device; shard_map: replicated)."""
  return float(local_value(x).reshape(-1)[0])


def gathered(x: Any) -> np.ndarray:
  """The whole value of ``x`` on the host, whichever devices and processes hold its shards."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def per_member(x: Any, members: int) -> np.ndarray:
  """A population's metric, one value per member (``PopulationBackend``'s outputs lead with the members)."""
  return gathered(x).reshape(members).astype(np.float64)


def member_groups(members: int, devices: int) -> int:
  """Over how many groups of devices ``PopulationBackend`` shards ``members``: gcd(members, devices), the most
  that give every device the same number of members without padding; each group's devices split the batches of
  its members. 1 (every device takes a share of every member's batch) where they share no factor."""
  return math.gcd(members, devices)


class Backend:
  """How the per-device steps are mapped over devices and how state and batches are laid out for them."""

  def __init__(self):
    self.checkpoint_sharding = NamedSharding(global_mesh(), P())
    self.data_devices = jax.device_count()  # the devices that split one run's batch

  def replicated(self, tree: PyTree) -> PyTree:
    """This process's values of ``tree`` placed replicated over all devices (the checkpoint layout)."""
    return jax.tree.map(lambda x: jax.device_put(local_value(x), self.checkpoint_sharding), tree)

  def to_checkpoint(self, state: PyTree) -> PyTree:
    """The state replicated over all devices, as checkpoints hold it."""
    raise NotImplementedError

  def from_checkpoint(self, state: PyTree) -> PyTree:
    """A checkpoint-layout state placed for the steps."""
    raise NotImplementedError

  def put_batch(self, batch: PyTree) -> PyTree:
    """Places this process's [local devices, per-device batch, ...] host batch."""
    raise NotImplementedError

  def put_replicated(self, tree: PyTree) -> PyTree:
    """Places host arrays (the same in every process) whole on every device, as the device pipeline's data."""
    raise NotImplementedError

  def map_train_step(self, step: Callable, replicated_input: bool = False) -> Callable:
    """``step(state, batch, rng)`` mapped over devices, the state donated; with ``replicated_input`` the
    second argument is ``put_replicated``'s data instead of a batch."""
    raise NotImplementedError

  def map_eval_step(self, step: Callable, replicated_input: bool = False) -> Callable:
    """``step(state, batch)`` mapped over devices; with ``replicated_input``, ``step(state, data, batch)`` with
    ``put_replicated``'s data."""
    raise NotImplementedError

  def eval_rows(self) -> tuple[int, int, int]:
    """How the device pipeline's evaluation batches are split (``device_pipeline.eval_indices``): (shares per
    batch, the first share this process places, how many it places)."""
    local = jax.local_device_count()
    return jax.device_count(), jax.process_index() * local, local


class PmapBackend(Backend):
  def __init__(self):
    super().__init__()
    self.mesh = local_mesh()

  def to_checkpoint(self, state):
    return self.replicated(jax.tree.map(lambda x: local_value(x)[0], state))

  def from_checkpoint(self, state):
    return replicate(state, self.mesh)

  def put_batch(self, batch):
    return shard(batch, self.mesh)

  def put_replicated(self, tree):
    return replicate(tree, self.mesh)

  def map_train_step(self, step, replicated_input=False):
    return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))

  def map_eval_step(self, step, replicated_input=False):
    return jax.pmap(step, axis_name=AXIS)


class ShardMapBackend(Backend):
  def __init__(self):
    super().__init__()
    self.mesh = global_mesh()
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

  def to_checkpoint(self, state):
    return state

  def from_checkpoint(self, state):
    return jax.device_put(state, self.checkpoint_sharding)

  def put_batch(self, batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self.batch_sharding, x.reshape(-1, *x.shape[2:])), batch)

  def put_replicated(self, tree):
    return jax.device_put(tree, self.checkpoint_sharding)

  def map_train_step(self, step, replicated_input=False):
    specs = (P(), P() if replicated_input else P(AXIS), P())
    return jax.jit(jax.shard_map(step, mesh=self.mesh, in_specs=specs, out_specs=(P(), P())), donate_argnums=(0,))

  def map_eval_step(self, step, replicated_input=False):
    specs = (P(), P(), P(AXIS)) if replicated_input else (P(), P(AXIS))
    return jax.jit(jax.shard_map(step, mesh=self.mesh, in_specs=specs, out_specs=P()))


class PopulationBackend(Backend):
  """A population's steps: ``jax.jit`` of ``jax.shard_map`` over a 2-D mesh (MEMBER_AXIS, AXIS) of all devices
  (``member_groups`` rows). The members' stacked state, their keys and their metrics are sharded over
  MEMBER_AXIS, so each device holds members / groups of them; each member's batch is split over the AXIS
  devices of its row, whose collectives (gradient and metric means, BatchNorm statistics) stay in the row. A
  member's batches are those of its solo run (the device pipeline's positions do not depend on the number of
  devices); its dropout masks are those of a solo run on ``data_devices`` devices."""

  def __init__(self, members: int, shard_members: bool = True):
    """``shard_members``: over ``member_groups`` rows; False: one row, each member's batch split over every
    device as in its solo run (a ``steps.loop_map`` population, which then equals its solo runs bit for bit)."""
    super().__init__()
    groups = member_groups(members, jax.device_count()) if shard_members else 1
    self.mesh = Mesh(np.array(jax.devices()).reshape(groups, -1), (MEMBER_AXIS, AXIS))
    self.data_devices = self.mesh.shape[AXIS]
    self.member_sharding = NamedSharding(self.mesh, P(MEMBER_AXIS))
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

  def to_checkpoint(self, state):
    return jax.device_put(state, self.checkpoint_sharding)

  def from_checkpoint(self, state):
    return jax.device_put(state, self.member_sharding)

  def put_batch(self, batch):
    """Places a batch every process holds whole ([data_devices, per-device batch, ...]: ``eval_rows``)."""
    def put(x):
      x = np.asarray(x).reshape(-1, *x.shape[2:])
      return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda index: x[index])
    return jax.tree.map(put, batch)

  def put_replicated(self, tree):
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def map_train_step(self, step, replicated_input=True):
    """The population step ``(state, data, member keys)``; its metrics have the member axis first."""
    specs = (P(MEMBER_AXIS), P(), P(MEMBER_AXIS))
    return jax.jit(jax.shard_map(step, mesh=self.mesh, in_specs=specs,
                                 out_specs=(P(MEMBER_AXIS), P(MEMBER_AXIS))), donate_argnums=(0,))

  def map_eval_step(self, step, replicated_input=True):
    specs = (P(MEMBER_AXIS), P(), P(AXIS))
    return jax.jit(jax.shard_map(step, mesh=self.mesh, in_specs=specs, out_specs=P(MEMBER_AXIS)))

  def eval_rows(self):
    return self.data_devices, 0, self.data_devices


def validate(name: str) -> None:
  """Raises ConfigError unless ``--config.parallel`` names a back-end (pure: builds nothing)."""
  check_choice('parallel', name, BACKENDS)


def get_backend(name: str) -> Backend:
  """The back-end named by ``--config.parallel``."""
  validate(name)
  return PmapBackend() if name == 'pmap' else ShardMapBackend()
