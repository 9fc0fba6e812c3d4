"""PyTorch mirrors of a cnnjax config, for the benchmarks only: the model, the optimizer with cnnjax's own
schedule, and the three ways PyTorch users run it (eager NCHW, channels_last, torch.compile), on the CPU or a
GPU, in float32 or with bfloat16 autocast.

A mirror has cnnjax's architecture (conv -> [BatchNorm] -> ReLU -> pool blocks, dense layers with dropout, a
linear output), optimizer (Adam/SGD/momentum/AdamW with the same clipping and hyper-parameters) and schedule
(the values of ``optim.schedule``, evaluated once); PyTorch's default initialisers, not Flax's.
"""

from __future__ import annotations

import os

import numpy as np

ARMS = ('torch_eager', 'torch_channels_last', 'torch_compile')


# The fields of config.model and config.optimizer the mirror computes as cnnjax does. Every other one must hold the
# base config's value (experiments/shapes.py), read from it, not copied here: a field added to cnnjax is refused
# until the mirror expresses it.
MIRRORED = {'model.' + f for f in ('variant', 'features', 'dense', 'kernel_size', 'norm', 'norm_groups', 'pool',
                                   'pool_window', 'pool_stride', 'dropout', 'conv_impl')}
MIRRORED |= {'optimizer.' + f for f in ('name', 'learning_rate', 'schedule', 'warmup_steps', 'momentum', 'nesterov',
                                        'weight_decay', 'grad_clip_norm')}


def unmirrored(config, fields: list[str]) -> list[tuple[str, object, object]]:
  """(field, base value, value) of each of ``fields`` (dotted) whose value in ``config`` is not the base config's."""
  from flax import traverse_util

  from cnnjax.cli import load_experiment
  base = traverse_util.flatten_dict(load_experiment('shapes').get_config().to_dict(), sep='.')
  flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
  def plain(value):  # a tuple field may hold a list after a round trip through JSON
    return tuple(value) if isinstance(value, list | tuple) else value
  return [(f, base[f], flat[f]) for f in fields if plain(base[f]) != plain(flat[f])]


def check_supported(config) -> None:
  """Raises ValueError naming the field where ``config`` is outside what the mirror expresses."""
  from flax import traverse_util

  from cnnjax import models
  m = config.model
  fields = [f for f in traverse_util.flatten_dict(config.to_dict(), sep='.')
            if f.split('.')[0] in ('model', 'optimizer') and f not in MIRRORED]
  for field, base, value in unmirrored(config, fields):
    raise ValueError(f'the PyTorch mirror needs --config.{field}={base} (got {value!r})')
  if m.norm not in ('none', 'batch') or m.pool not in ('max', 'avg', 'none') or m.kernel_size % 2 == 0:
    raise ValueError('the PyTorch mirror needs norm none|batch, pool max|avg|none and an odd kernel_size')
  if config.head != 'multiclass' or config.label_smoothing or not models.conv_features(m):
    raise ValueError('the PyTorch mirror needs a CNN with the multiclass head and no label smoothing')


def build_model(config, image_shape: tuple[int, int, int], num_outputs: int):
  """The torch.nn.Sequential of ``config.model`` for NCHW inputs of ``image_shape`` (H, W, C)."""
  from torch import nn

  from cnnjax import models
  check_supported(config)
  m = config.model
  height, width, channels = image_shape
  layers = []
  for features in models.conv_features(m):
    layers.append(nn.Conv2d(channels, features, m.kernel_size, padding=m.kernel_size // 2, bias=m.norm != 'batch'))
    if m.norm == 'batch':  # flax's momentum 0.9 keeps 0.9 of the old average: torch's momentum is 1 - 0.9
      layers.append(nn.BatchNorm2d(features, eps=1e-5, momentum=0.1))
    layers.append(nn.ReLU())
    if m.pool != 'none':
      pool = nn.MaxPool2d if m.pool == 'max' else nn.AvgPool2d
      layers.append(pool(m.pool_window, m.pool_stride))
      height, width = (height - m.pool_window) // m.pool_stride + 1, (width - m.pool_window) // m.pool_stride + 1
    channels = features
  layers.append(nn.Flatten())
  width_in = channels * height * width
  for dense in models.dense_widths(m):
    layers += [nn.Linear(width_in, dense), nn.ReLU(), nn.Dropout(m.dropout)]
    width_in = dense
  return nn.Sequential(*layers, nn.Linear(width_in, num_outputs))


def schedule_values(config) -> np.ndarray:
  """cnnjax's learning rate at steps 0..num_train_steps (the peak rate times ``optim.schedule``)."""
  import jax

  from cnnjax import optim
  shape = optim.schedule(config.optimizer, config.num_train_steps)
  steps = np.arange(config.num_train_steps + 1)
  return config.optimizer.learning_rate * np.asarray(jax.vmap(shape)(steps), np.float64)


class Trainer:
  """One PyTorch arm: the mirror, its optimizer and schedule, and steps on NHWC batches (numpy arrays, or
  tensors already on ``device``).

  Args:
    device: 'cpu' or a GPU such as 'cuda'.
    bf16: compute under ``torch.autocast`` in bfloat16 (parameters and optimizer stay float32).
  """

  def __init__(self, config, image_shape, num_outputs: int, arm: str, device: str = 'cpu', bf16: bool = False):
    import torch
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(config.seed)
    self.torch, self.arm, self.device = torch, arm, torch.device(device)
    self.autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=bf16)
    self.model = build_model(config, image_shape, num_outputs)
    self.layout = torch.channels_last if arm in ('torch_channels_last', 'torch_compile') else torch.contiguous_format
    self.model = self.model.to(self.device, memory_format=self.layout)
    opt = config.optimizer
    params = self.model.parameters()
    self.opt = {'sgd': lambda: torch.optim.SGD(params, lr=1.0),
                'momentum': lambda: torch.optim.SGD(params, lr=1.0, momentum=opt.momentum, nesterov=opt.nesterov),
                'adam': lambda: torch.optim.Adam(params, lr=1.0),
                'adamw': lambda: torch.optim.AdamW(params, lr=1.0, weight_decay=opt.weight_decay)}[opt.name]()
    self.rates, self.clip, self.step_count = schedule_values(config), opt.grad_clip_norm, 0
    self.forward = torch.compile(self.model) if arm == 'torch_compile' else self.model
    self.loss = torch.nn.CrossEntropyLoss()

  def _tensor(self, x):
    return (self.torch.from_numpy(x) if isinstance(x, np.ndarray) else x).to(self.device)

  def _images(self, images):
    return self._tensor(images).permute(0, 3, 1, 2).contiguous(memory_format=self.layout)

  def train_step(self, images, labels):
    """One step on a [B, H, W, C] batch at cnnjax's learning rate for this step; returns the loss as a tensor
    on the device (``float()`` of it waits for the step)."""
    self.model.train()
    for group in self.opt.param_groups:
      group['lr'] = float(self.rates[min(self.step_count, len(self.rates) - 1)])
    self.opt.zero_grad(set_to_none=True)
    with self.autocast:
      loss = self.loss(self.forward(self._images(images)).float(), self._tensor(labels).long())
    loss.backward()
    if self.clip > 0:
      self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.step_count += 1
    return loss.detach()

  def synchronize(self) -> None:
    """Waits for the steps queued on a GPU."""
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize(self.device)

  def accuracy(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Accuracy over all of ``images`` in eval mode (running BatchNorm statistics, no dropout)."""
    self.model.eval()
    correct = 0
    with self.torch.no_grad(), self.autocast:
      for i in range(0, len(images), batch_size):
        logits = self.forward(self._images(images[i:i + batch_size]))
        correct += int((logits.argmax(-1) == self._tensor(labels[i:i + batch_size])).sum())
    return correct / len(images)
