"""What a sweep's runs are called on disk: a run's directory name, formatted and parsed here only."""

from __future__ import annotations

import dataclasses
import re

_SEED = re.compile(r'^(?P<point>.*),seed=(?P<seed>\d+)$')
_LR = re.compile(r'^lr=(?P<lr>[0-9.e+-]+)$')


@dataclasses.dataclass(frozen=True)
class RunName:
  """A sweep run's place: its point (a setting), its seed where the sweep repeats the point over seeds, and its
  learning rate where the point has a grid. On disk: WORKDIR/<point>[,seed=<S>]/[lr=<G>/]."""
  point: str
  seed: int | None = None
  lr: float | None = None

  @property
  def run(self) -> str:
    """The directory of the point's seed: 'point' or 'point,seed=S'."""
    return self.point if self.seed is None else f'{self.point},seed={self.seed}'

  @property
  def lr_dir(self) -> str:
    """The directory, below ``run``, of the learning rate's trial: 'lr=G' ('' without a rate)."""
    return '' if self.lr is None else f'lr={self.lr:g}'

  @classmethod
  def parse(cls, run: str, lr_dir: str = '') -> RunName:
    """The inverse of (``run``, ``lr_dir``)."""
    seed = _SEED.match(run)
    rate = _LR.match(lr_dir)
    return cls(seed['point'] if seed else run, int(seed['seed']) if seed else None,
               float(rate['lr']) if rate else None)
