"""Each head's loss and metrics against closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import heads


def test_multiclass_uniform_logits_give_log_k():
  m = heads.get_head('multiclass').metrics(jnp.zeros((4, 6)), jnp.array([0, 1, 2, 5]))
  np.testing.assert_allclose(m['loss'], np.log(6), rtol=1e-6)


def test_multiclass_accuracy():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  np.testing.assert_array_equal(heads.get_head('multiclass').metrics(logits, jnp.array([0, 1]))['accuracy'], [1, 0])


def test_binary_cross_entropy():
  head = heads.get_head('binary')
  np.testing.assert_allclose(head.loss(jnp.zeros((3, 1)), jnp.array([0.0, 1.0, 1.0])), np.log(2), rtol=1e-6)
  logit, label = 1.5, 1.0
  want = -np.log(1 / (1 + np.exp(-logit)))
  np.testing.assert_allclose(head.loss(jnp.array([[logit]]), jnp.array([label])), [want], rtol=1e-5)
  np.testing.assert_array_equal(head.metrics(jnp.array([[1.0], [-1.0]]), jnp.array([0.0, 0.0]))['accuracy'], [0, 1])


def test_regression_mse_and_mae():
  m = heads.get_head('regression').metrics(jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [3.0, 1.0]]))
  np.testing.assert_allclose(m['loss'], [2.5, 5.0])  # (1 + 4) / 2, (9 + 1) / 2
  np.testing.assert_allclose(m['mae'], [1.5, 2.0])


def test_unknown_head():
  with pytest.raises(ValueError, match='--config.head'):
    heads.get_head('ranking')


def test_label_smoothing_against_the_closed_form():
  """Cross-entropy against targets (1 - a) * one_hot + a / K, and BCE against y (1 - a) + a / 2, by hand."""
  logits, labels, a = np.array([[2.0, -1.0, 0.5]]), np.array([0]), 0.1
  p = np.exp(logits) / np.exp(logits).sum()
  q = (1 - a) * np.eye(3)[labels] + a / 3
  got = heads.get_head('multiclass').loss(jnp.array(logits), jnp.array(labels), label_smoothing=a)
  np.testing.assert_allclose(got, [-(q * np.log(p)).sum()], rtol=1e-5)
  logit, y = 1.5, 1.0 * (1 - a) + a / 2
  s = 1 / (1 + np.exp(-logit))
  got = heads.get_head('binary').loss(jnp.array([[logit]]), jnp.array([1.0]), label_smoothing=a)
  np.testing.assert_allclose(got, [-(y * np.log(s) + (1 - y) * np.log(1 - s))], rtol=1e-5)
