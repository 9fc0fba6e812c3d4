"""Data-parallel placement over the local devices with current APIs (NamedSharding + jax.device_put).

``jax.pmap`` maps over a leading device axis; these helpers build that axis: parameters are replicated
(one copy per device) and batches are split, each placed with a ``NamedSharding`` over a 1-D mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'batch'  # the data-parallel axis name used by pmap and in every collective

PyTree = Any


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices, in pmap's order."""
  return Mesh(np.array(jax.local_devices()), (AXIS,))


def device_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (device) axis of an array over the mesh."""
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """One copy of every leaf per device, stacked on a new leading axis."""
  sharding = device_sharding(mesh)
  n = mesh.size
  return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), sharding), tree)


def unreplicate(tree: PyTree) -> PyTree:
  """The first device's copy of a replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)


def shard(batch: PyTree, mesh: Mesh) -> PyTree:
  """Places a [devices, per-device batch, ...] host batch with slice i on device i."""
  return jax.device_put(batch, device_sharding(mesh))
