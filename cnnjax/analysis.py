"""Closed-form analysis of a CNN: per-layer output shape, parameters, FLOPs, receptive field and the parameter
count of a dense layer with the same input and output sizes; XLA's FLOP count; shift invariance.

The closed forms count a multiply-add as 2 FLOPs: conv 2·k²·C_in·C_out·H_out·W_out, dense 2·in·out, and a
pooling window k² operations per output (normalisation layers' FLOPs are not counted). A conv has k²·C_in·C_out
weights and C_out biases, or, when normalised, a scale (unless model.norm_scale is False) and a bias per
channel in the norm instead. The receptive field follows r ← r + (k_eff - 1)·j, j ← j·s.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax import models, ops


@dataclasses.dataclass(frozen=True)
class LayerStats:
  """One layer of the analysis table."""
  name: str
  output_shape: tuple[int, ...]
  params: int
  flops: int  # per image, forward pass
  receptive_field: int  # side, in input pixels, of the window one output sees
  dense_equivalent: int  # weights of a dense layer mapping this layer's input size to its output size


def analyze(model_config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_outputs: int
            ) -> list[LayerStats]:
  """The per-layer table of ``config.model`` on images of ``image_shape`` (validates the geometry)."""
  rows = []
  rf, jump = 1, 1
  for layer in models.layers(models.block_specs(model_config), image_shape):
    (h, w, c), (h2, w2, c2), k = layer.input_shape, layer.output_shape, layer.window
    rf, jump = rf + layer.dilation * (k - 1) * jump, jump * layer.stride
    if layer.kind == 'conv':
      weights = 0 if layer.fixed else k * k * c * c2
      norm_params = (1 + model_config.norm_scale) * c2  # the norm's bias, and its scale unless fixed at 1
      params = weights + (norm_params if layer.norm != 'none' else 0 if layer.fixed else c2)
      flops = 2 * k * k * c * c2 * h2 * w2
    else:
      params, flops = 0, k * k * h2 * w2 * c2
    rows.append(LayerStats(layer.name, (h2, w2, c2), params, flops, rf, h * w * c * h2 * w2 * c2))
  width = int(np.prod(rows[-1].output_shape)) if rows else int(np.prod(image_shape))
  norm = 2 if model_config.dense_norm != 'none' else 0  # a scale and a bias per unit of a hidden layer's norm
  for name, out in [*((f'dense{i}', f) for i, f in enumerate(models.dense_widths(model_config))),
                    ('output', num_outputs)]:
    params = width * out + out + (norm * out if name != 'output' else 0)
    rows.append(LayerStats(name, (out,), params, 2 * width * out, image_shape[0], width * out))
    width = out
  return rows


def widths(model_config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_outputs: int) -> str:
  """The log's one-line shape of the model: the conv widths as built (a fixed first layer's filter count,
  named), the dense widths and the outputs, e.g. 'conv widths 2 (sobel, fixed)-32, dense 64, 10 outputs'."""
  convs = [x for x in models.layers(models.block_specs(model_config), image_shape) if x.kind == 'conv']
  conv = '-'.join(f'{x.output_shape[2]}{f" ({model_config.first_layer}, fixed)" * x.fixed}' for x in convs)
  dense = '-'.join(map(str, models.dense_widths(model_config)))
  return f'conv widths {conv or "none"}, dense {dense or "none"}, {num_outputs} outputs'


def totals(rows: list[LayerStats]) -> dict[str, int]:
  """Parameters and FLOPs of the whole model."""
  return {'params': sum(r.params for r in rows), 'flops': sum(r.flops for r in rows)}


def format_table(rows: list[LayerStats]) -> str:
  """A markdown table of the analysis with a total row."""
  lines = ['| layer | output | params | FLOPs | receptive field | dense-equivalent weights |',
           '| --- | --- | ---: | ---: | ---: | ---: |']
  for r in rows:
    shape = 'x'.join(map(str, r.output_shape))
    dense = f'{r.dense_equivalent:,}' if r.params else ''  # only layers with weights have a dense counterpart
    lines.append(f'| {r.name} | {shape} | {r.params:,} | {r.flops:,} | {r.receptive_field} | {dense} |')
  t = totals(rows)
  lines.append(f"| **total** | | **{t['params']:,}** | **{t['flops']:,}** | | |")
  return '\n'.join(lines)


def xla_flops(model: models.CNN, image_shape: tuple[int, ...]) -> float:
  """FLOPs of one forward pass on one image as counted by XLA's cost analysis of the compiled program."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  cost = jax.jit(model.apply).lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost['flops'])


def shift_invariance(apply_fn, variables, images: np.ndarray, targets: np.ndarray, max_shift: int
                     ) -> dict[str, list[float]]:
  """How predictions survive input shifts of 0..max_shift pixels.

  Each shift moves the image diagonally by (k, k) pixels, wrapping around (objects sit away from the border).
  Agreement alone rewards a model that predicts one class everywhere (agreement 1); ``consistent_correct``
  cannot: it counts images classified correctly both unshifted and shifted, so it is at most the accuracy.

  Args:
    apply_fn: ``model.apply``.
    variables: the trained model's variables ({'params', 'batch_stats'}).
    images: [N, H, W, C] normalised images.
    targets: [N] class labels.
    max_shift: the largest shift.

  Returns:
    {'shift': [0..max_shift], 'accuracy': accuracy on shifted images, 'agreement': predictions equal to the
    unshifted ones, 'consistent_correct': correct unshifted and shifted}, fractions of the N images.
  """
  predict = jax.jit(lambda x: apply_fn(variables, x).argmax(-1))
  base = np.asarray(predict(images))
  result = {'shift': [], 'accuracy': [], 'agreement': [], 'consistent_correct': []}
  for k in range(max_shift + 1):
    pred = np.asarray(predict(jnp.roll(images, (k, k), axis=(1, 2))))
    result['shift'].append(k)
    result['accuracy'].append(float((pred == targets).mean()))
    result['agreement'].append(float((pred == base).mean()))
    result['consistent_correct'].append(float(((pred == targets) & (base == targets)).mean()))
  return result


def first_layer_maps(model: models.CNN, variables, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The first block's filters (averaged over input channels) and its output feature maps for one image.

  Returns:
    filters [F, k, k] and feature maps [F, H, W] (block0's output, after activation and pooling).
  """
  _, state = model.apply(variables, jnp.asarray(image)[None], capture_intermediates=True,
                         mutable=['intermediates'])
  maps = np.asarray(state['intermediates']['block0']['__call__'][0][0])
  spec = model.blocks[0]
  params = variables['params']
  kernel = (np.asarray(params['block0']['kernel']) if 'block0' in params
            else ops.fixed_filter_bank(spec.fixed_filters, image.shape[-1], spec.kernel_size))
  return np.moveaxis(kernel.mean(axis=2), -1, 0), np.moveaxis(maps, -1, 0)
