"""Closed-form analysis (shapes, parameters, FLOPs, receptive fields) against hand counts, and shift invariance."""

import jax.numpy as jnp
import numpy as np

from cnnjax import analysis, models


def test_shift_invariance_of_a_constant_predictor_is_its_accuracy_not_one():
  """A model that answers class 0 for everything agrees with itself under every shift; correct-both-times
  stays at its accuracy (the share of class 0)."""
  images = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype(np.float32)
  targets = np.array([0, 0, 0, 1, 2, 3, 4, 5, 1, 2])
  constant = lambda variables, x: jnp.zeros((len(x), 6)).at[:, 0].set(1.0)  # noqa: E731
  result = analysis.shift_invariance(constant, {}, images, targets, 2)
  assert result['agreement'] == [1.0] * 3 and result['accuracy'] == [0.3] * 3
  assert result['consistent_correct'] == [0.3] * 3

def test_analysis_reproduces_the_seed_numbers(config):
  # One 3x3 conv on a 224x224 single-channel map: 9 weights (+1 bias) against 224^4 for a dense layer of the
  # same input and output size; 2x2 pooling then gives 112x112.
  config.model.features, config.model.dense = (1,), (1,)
  rows = analysis.analyze(config.model, (224, 224, 1), num_outputs=1)
  conv, pool = rows[0], rows[1]
  assert (conv.output_shape, conv.params - 1, conv.dense_equivalent) == ((224, 224, 1), 9, 224 * 224 * 224 * 224)
  assert pool.output_shape == (112, 112, 1)

def test_analysis_closed_forms_for_tiny(config):
  rows = analysis.analyze(config.model, (32, 32, 3), num_outputs=6)
  by_name = {r.name: r for r in rows}
  assert [r.receptive_field for r in rows[:4]] == [3, 4, 8, 10]  # 3; 3+1*1; 4+2*2; 8+1*2
  assert by_name['block0.conv'].flops == 2 * 9 * 3 * 4 * 32 * 32 and by_name['dense0'].flops == 2 * 512 * 16
  assert analysis.totals(rows)['params'] == 8718  # as counted by hand in test_models
  model = models.build_model(config.model, 6)
  assert abs(analysis.xla_flops(model, (32, 32, 3)) / analysis.totals(rows)['flops'] - 1) < 0.1


def test_the_table_counts_the_models_parameters_with_batchnorm_and_dropout(config):
  """The per-layer table and "Model: N parameters" agree: BatchNorm's running statistics are not parameters,
  and dropout has none."""
  config.model.norm, config.model.dropout = 'batch', 0.3
  rows = analysis.analyze(config.model, (32, 32, 3), num_outputs=6)
  assert analysis.totals(rows)['params'] == models.count_params(models.build_model(config.model, 6), (32, 32, 3))
  assert not any('dropout' in r.name.lower() for r in rows)


def test_layers_without_weights_have_no_dense_equivalent(config):
  table = analysis.format_table(analysis.analyze(config.model, (32, 32, 3), num_outputs=6))
  pool = next(line for line in table.splitlines() if line.startswith('| block0.pool'))
  assert pool.rstrip().endswith('|  |')


def test_widths_name_the_channels_each_conv_makes(config):
  """A fixed first layer makes as many channels as its filter bank (Sobel: 2 per input channel), not the
  configured first width."""
  config.model.features, config.model.dense = (16, 32), (64,)
  assert analysis.widths(config.model, (28, 28, 1), 10) == 'conv widths 16-32, dense 64, 10 outputs'
  config.model.first_layer = 'sobel'
  assert analysis.widths(config.model, (28, 28, 1), 10) == 'conv widths 2 (sobel, fixed)-32, dense 64, 10 outputs'
  config.model.features, config.model.dense = (), ()
  config.model.variant, config.model.first_layer = 'mlp', 'learned'
  assert analysis.widths(config.model, (28, 28, 1), 10) == 'conv widths none, dense 256, 10 outputs'
