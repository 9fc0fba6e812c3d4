"""Task heads: how a model's raw outputs become a loss and metrics.

regression: linear outputs, mean squared error.  binary: one logit through a sigmoid, binary cross-entropy.
multiclass: one logit per class through a softmax, cross-entropy.  Losses and metrics are per example, so
that the train step can average them and the eval step can mask padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Head:
  """A task: ``loss(outputs, targets)`` and ``metrics(outputs, targets)``, both per example."""
  name: str
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  metrics: Callable[[jax.Array, jax.Array], Metrics]


def _multiclass_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _multiclass_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  return {'loss': _multiclass_loss(logits, labels), 'accuracy': (logits.argmax(-1) == labels).astype(jnp.float32)}


def _binary_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(logits.dtype))


def _binary_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  return {'loss': _binary_loss(logits, labels),
          'accuracy': ((logits[..., 0] > 0) == (labels > 0)).astype(jnp.float32)}


def _regression_loss(preds: jax.Array, targets: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(preds - targets.reshape(preds.shape)), axis=-1)


def _regression_metrics(preds: jax.Array, targets: jax.Array) -> Metrics:
  return {'loss': _regression_loss(preds, targets),
          'mae': jnp.mean(jnp.abs(preds - targets.reshape(preds.shape)), axis=-1)}


HEADS: dict[str, Head] = {
    'multiclass': Head('multiclass', _multiclass_loss, _multiclass_metrics),
    'binary': Head('binary', _binary_loss, _binary_metrics),
    'regression': Head('regression', _regression_loss, _regression_metrics),
}


def get_head(name: str) -> Head:
  """Looks a head up by name ('multiclass', 'binary' or 'regression')."""
  if name not in HEADS:
    raise ValueError(f'--config.head={name!r} is unknown; choose one of {sorted(HEADS)}')
  return HEADS[name]
