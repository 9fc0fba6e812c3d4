"""Using what was trained: ``load(WORKDIR)`` returns a ``Classifier`` of raw images, built from the workdir
alone: its config.json (the model), data.json (``records.DataRecord``: input size, normalisation, classes) and its
tested weights (the best-validation checkpoint where the run kept one, else the latest), on whatever devices are
present. ``launch.py --workdir=DIR --predict=PATH...`` prints each image's top classes with it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cnnjax import augment, checkpointing, files, images, models, parallel, records, workdirs
from cnnjax.errors import DamagedFile, DataError

TOP = 3  # classes printed per image by --predict


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained run's model as a function of raw images: each fitted to the run's input (short side scaled, centre
  cropped, its colour mode), normalised as in training, and classified."""
  model: models.CNN
  variables: Any
  record: records.DataRecord
  step: int

  def inputs(self, items: Sequence[str | np.ndarray]) -> np.ndarray:
    """Files or arrays (uint8 [H, W, C] or [H, W]) -> the model's uint8 inputs [N, size, size, C] (an array
    already of that shape is taken as it is)."""
    from PIL import Image
    size, channels = self.record.image_size, 1 if self.record.grayscale else 3
    fitted = []
    for item in items:
      if isinstance(item, str):
        array, _, why = images.decode(item, size, self.record.grayscale)
        if array is None:
          raise DataError(f'{item} cannot be read as an image ({why})')
      elif np.shape(item) == (size, size, channels):
        array = np.asarray(item, np.uint8)
      else:
        array, _ = images.fit(Image.fromarray(np.asarray(item, np.uint8)), size, self.record.grayscale)
      fitted.append(array)
    return np.stack(fitted)

  def probabilities(self, items: Sequence[str | np.ndarray]) -> np.ndarray:
    """[N, classes]: softmax (multiclass) or (1 - p, p) of the sigmoid (binary)."""
    x = augment.Preprocess(self.record.mean, self.record.std).normalize(jnp.asarray(self.inputs(items)))
    logits = _apply(self.model, self.variables, x)
    if self.record.head == 'binary':
      p = jax.nn.sigmoid(logits[:, 0])
      return np.asarray(jnp.stack([1 - p, p], axis=1))
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def top(self, items: Sequence[str | np.ndarray], k: int = TOP) -> list[list[tuple[str, float]]]:
    """Each image's ``k`` most probable classes, (name, probability), most probable first."""
    probabilities = self.probabilities(items)
    return [[(self.record.classes[i], float(p[i])) for i in np.argsort(-p)[:k]] for p in probabilities]


def _apply(model: models.CNN, variables: Any, x: jax.Array) -> jax.Array:
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


def report(workdir: str, paths: Sequence[str]) -> str:
  """``--predict``: a line per image file (each folder in ``paths`` stands for the files in it): its ``TOP``
  classes with their probabilities, by the run in ``workdir``."""
  classifier = load(workdir)
  found = []
  for path in paths:
    if os.path.isdir(path):
      found += sorted(os.path.join(path, n) for n in os.listdir(path) if not n.startswith('.'))
    elif os.path.isfile(path):
      found.append(path)
    else:
      raise DataError(f'--predict={path}: no such file or folder')
  lines = [f'{os.path.basename(workdirs.resolve(workdir))} (step {classifier.step}, {classifier.record.dataset}):']
  for path in found:
    array, _, why = images.decode(path, classifier.record.image_size, classifier.record.grayscale)
    if array is None:
      lines.append(f'{path}: skipped ({why})')
      continue
    lines.append(f'{path}: ' + ', '.join(f'{name} {p:.3f}' for name, p in classifier.top([array])[0]))
  return '\n'.join(lines)


def load(workdir: str) -> Classifier:
  """The classifier a finished (or checkpointed) run in ``workdir`` trained.

  Raises:
    DataError for a directory that holds no cnnjax run or no checkpoint, a regression run (nothing to classify),
    or a record written by a newer cnnjax; DamagedFile for a damaged config, record or checkpoint.
  """
  workdir = workdirs.resolve(workdir)
  config_path, record_path = (os.path.join(workdir, f) for f in (workdirs.CONFIG_FILE, records.DATA_FILE))
  if not os.path.exists(config_path) or not os.path.exists(record_path):
    raise DataError(f'{workdir} holds no trained cnnjax run ({workdirs.CONFIG_FILE} and {records.DATA_FILE}); point '
                    '--workdir at the run\'s directory (a sweep\'s: WORKDIR/<point>/lr=<rate>)')
  config = ml_collections.ConfigDict(files.read_json(config_path, 'restore it from a copy of the run'))
  try:
    record = records.DataRecord.from_json(files.read_json(record_path, 'run the training command again to rewrite it'))
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f'{record_path} is not a record this cnnjax reads ({e}); use the cnnjax that trained the run, or '
                    'run its training command again to rewrite it') from None
  if record.head == 'regression':
    raise DataError(f'{workdir} holds a regression run: it predicts a number, not a class')
  model = models.build_model(config.model, record.num_outputs, parallel.AXIS, cpu_speedups=False)
  variables, step = _restore(workdir)
  return Classifier(model, variables, record, step)


def _restore(workdir: str) -> tuple[Any, int]:
  """The tested weights ({'params', 'batch_stats'}) and their step: the best-validation checkpoint's where the run
  kept one, else the latest intact checkpoint's."""
  for subdir in (checkpointing.BEST_CHECKPOINT_DIR, checkpointing.CHECKPOINT_DIR):
    directory = os.path.join(workdir, subdir)
    if not os.path.isdir(directory):
      continue
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
    step = manager.best_step() if subdir == checkpointing.BEST_CHECKPOINT_DIR else manager.latest_step()
    if step is None:
      continue
    problem = files.damage(os.path.join(directory, str(step))) if files.is_sealed(
        os.path.join(directory, str(step))) else None
    try:
      if problem:
        raise ValueError(problem)
      state = manager.restore(step, args=ocp.args.StandardRestore(_target(manager, step)))
    except Exception as e:  # noqa: BLE001 - any failure to read it is the checkpoint's
      raise DamagedFile(f'the checkpoint {os.path.join(directory, str(step))} cannot be read ({str(e)[:200]}); '
                        'resume the run to write a new one, or move it away to use an earlier one') from None
    finally:
      manager.close()
    variables = {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
    return jax.tree.map(lambda x: jnp.asarray(parallel.local_value(x)), variables), step
  raise DataError(f'{workdir} holds no checkpoint yet; train the run (its command resumes it) before predicting')


def _target(manager: ocp.CheckpointManager, step: int) -> Any:
  """The checkpoint's tree as abstract arrays on this process's first device: a checkpoint written on other
  devices (8 GPUs, a cluster) restores here."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = manager.item_metadata(step)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata,
                      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
