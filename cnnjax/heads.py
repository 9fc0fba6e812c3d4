"""Task heads: everything that depends on the task, in one place per head.

A head says how a model's raw outputs become a loss and metrics (per example, so that the train step can
average them and the eval step can mask padding), how many outputs the model needs, how an example of a
dataset becomes the target, and whether a dataset can serve the task at all.

regression: linear outputs, mean squared error on a numeric feature (``--config.data.regression_target``).
binary: one logit through a sigmoid, binary cross-entropy; on a multi-class dataset the target is
``label == --config.data.positive_class``.  multiclass: one logit per class, softmax cross-entropy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnnjax.config import ConfigError, check_int, check_number, check_str, lookup

Metrics = dict[str, jax.Array]
Features = dict  # a TFDS FeaturesDict: name -> feature (``builder.info.features``)
TargetArray = Callable[[dict[str, np.ndarray]], np.ndarray]  # a split's feature arrays -> its targets [N, ...]


@dataclasses.dataclass(frozen=True)
class Head:
  """A task.

  Attributes:
    name: its ``--config.head`` value.
    loss: ``(outputs, targets, label_smoothing=0.0) -> [B]`` per-example loss; classification heads train on
      targets smoothed towards uniform by ``label_smoothing`` (``--config.label_smoothing``).
    metrics: ``(outputs, targets) -> {name: [B]}``, the loss among them.
    num_outputs: ``(features, data_config) -> int``, the model's output width.
    target_array: ``(features, data_config) -> (feature arrays -> targets)``: a whole split's targets, from its
      numpy arrays.
    check: ``(features, data_config) -> None``; raises ConfigError when the dataset cannot serve the task.
    select_by: (metric, sign): what every choice made on validation (learning rate, checkpoint) maximises
      (sign 1) or minimises (-1).
  """
  name: str
  loss: Callable[..., jax.Array]
  metrics: Callable[[jax.Array, jax.Array], Metrics]
  num_outputs: Callable[[Features, ml_collections.ConfigDict], int]
  target_array: Callable[[Features, ml_collections.ConfigDict], TargetArray]
  check: Callable[[Features, ml_collections.ConfigDict], None]
  select_by: tuple[str, int] = ('accuracy', 1)

  def selection(self, prefix: str = 'val') -> tuple[str, int]:
    """('<prefix>_<metric>', sign) of ``select_by``, as the evaluations name it."""
    return f'{prefix}_{self.select_by[0]}', self.select_by[1]


# ---------------------------------------------------------------------------------------------------------
# multiclass

def _multiclass_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(one_hot, label_smoothing))


def _multiclass_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  return {'loss': _multiclass_loss(logits, labels), 'accuracy': (logits.argmax(-1) == labels).astype(jnp.float32)}


def _has_labels(features: Features, data_config: ml_collections.ConfigDict) -> None:
  if 'label' not in features:
    raise ConfigError(f'--config.data.name={data_config.name} has no class labels; use --config.head=regression')


MULTICLASS = Head('multiclass', _multiclass_loss, _multiclass_metrics,
                  num_outputs=lambda features, _: features['label'].num_classes,
                  target_array=lambda features, _: lambda ex: ex['label'].astype(np.int32),
                  check=_has_labels)


# ---------------------------------------------------------------------------------------------------------
# binary

def _binary_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  labels = labels.astype(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2  # smoothed towards 1/2
  return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels)


def _binary_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  return {'loss': _binary_loss(logits, labels),
          'accuracy': ((logits[..., 0] > 0) == (labels > 0)).astype(jnp.float32)}


def _binary_target_array(features: Features, data_config: ml_collections.ConfigDict) -> TargetArray:
  """Two classes: the label itself; more: label == positive_class."""
  if features['label'].num_classes == 2:
    return lambda ex: ex['label'].astype(np.float32)
  return lambda ex: (ex['label'] == data_config.positive_class).astype(np.float32)


def _binary_check(features: Features, data_config: ml_collections.ConfigDict) -> None:
  _has_labels(features, data_config)
  num_classes = features['label'].num_classes
  if num_classes > 2 and not 0 <= data_config.positive_class < num_classes:
    raise ConfigError(f'--config.data.positive_class={data_config.positive_class} must be in [0, {num_classes})')


BINARY = Head('binary', _binary_loss, _binary_metrics, num_outputs=lambda features, _: 1,
              target_array=_binary_target_array, check=_binary_check)


# ---------------------------------------------------------------------------------------------------------
# regression

def _regression_loss(preds: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  del label_smoothing  # validate() refuses it for regression
  return jnp.mean(jnp.square(preds - targets.reshape(preds.shape)), axis=-1)


def _regression_metrics(preds: jax.Array, targets: jax.Array) -> Metrics:
  return {'loss': _regression_loss(preds, targets),
          'mae': jnp.mean(jnp.abs(preds - targets.reshape(preds.shape)), axis=-1)}


def _regression_check(features: Features, data_config: ml_collections.ConfigDict) -> None:
  if data_config.regression_target not in features:
    raise ConfigError(f'--config.data.regression_target={data_config.regression_target!r} is not a feature of '
                      f'{data_config.name}; choose one of {sorted(features.keys())}')


REGRESSION = Head(
    'regression', _regression_loss, _regression_metrics,
    num_outputs=lambda features, data_config: int(np.prod(features[data_config.regression_target].shape, dtype=int)),
    target_array=lambda features, data_config: lambda ex: ex[data_config.regression_target].astype(
        np.float32).reshape(len(ex[data_config.regression_target]), -1),
    check=_regression_check, select_by=('loss', -1))


HEADS: dict[str, Head] = {h.name: h for h in (MULTICLASS, BINARY, REGRESSION)}


def get_head(name: str) -> Head:
  """Looks a head up by ``--config.head`` ('multiclass', 'binary' or 'regression')."""
  return lookup('head', name, HEADS)


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses a head name that does not exist and label smoothing that is outside [0, 1) or meaningless."""
  get_head(config.head)
  check_number('label_smoothing', config.label_smoothing, 0, 1, high_open=True, hint='0.1 is usual')
  check_int('data.positive_class', config.data.positive_class, 0)
  check_str('data.regression_target', config.data.regression_target)
  if config.label_smoothing and config.head == 'regression':
    raise ConfigError('--config.label_smoothing smooths class targets; set it to 0 for --config.head=regression')

