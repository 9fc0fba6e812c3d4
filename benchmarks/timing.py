"""What the benchmarks time with: windows of steps, compile seconds, a matmul peak measured beside the arms, and
cnnjax's own train steps (``train.setup``'s) as a function of a step count. No flags: every benchmark imports it.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable


def timed_windows(run_steps: Callable[[int], None], steps_per_window: int, windows: int) -> list[float]:
  """Seconds per step of each window; run_steps(n) must block until its n steps are done."""
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    run_steps(steps_per_window)
    times.append((time.perf_counter() - start) / steps_per_window)
  return times


def alternating_seconds(arms: dict[str, Callable[[], None]], windows: int) -> dict[str, list[float]]:
  """Seconds of each call of each arm, ``windows`` calls per arm, the arms alternating so that every arm sees the
  same moments of the machine (whose speed drifts); each call must block until its work is done."""
  seconds = {name: [] for name in arms}
  for _ in range(windows):
    for name, call in arms.items():
      start = time.perf_counter()
      call()
      seconds[name].append(time.perf_counter() - start)
  return seconds


def compile_seconds(train: Callable[[int], None], steps: int = 1) -> float:
  """The first ``train(steps)`` (trace + compile + the steps; torch.compile's compile, eager's warm-up) minus
  the fastest of three steady calls."""
  start = time.perf_counter()
  train(steps)
  first = time.perf_counter() - start
  return first - steps * min(timed_windows(train, steps, 3))


def steps_for(run: Callable[[int], None], seconds: float, multiple: int = 1) -> int:
  """How many steps (a multiple of ``multiple``) fill about ``seconds``, after one warm-up call."""
  run(multiple)
  start = time.perf_counter()
  run(2 * multiple)
  per_step = (time.perf_counter() - start) / (2 * multiple)
  return multiple * max(2, int(seconds / per_step / multiple))


class MatmulPeak:
  """Matmul TFLOP/s of XLA on this backend (n x n products of ``dtype``), measured between the timed windows so
  that a model's share of it is taken at the same machine state (machine speeds drift)."""

  def __init__(self, n: int = 2048, dtype: str = 'float32'):
    import jax
    import jax.numpy as jnp
    self.n, self.a = n, jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    self.f = jax.jit(lambda a: a @ a)
    self.f(self.a).block_until_ready()

  def measure(self, repeats: int = 3) -> float:
    """The median TFLOP/s of ``repeats`` products."""
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      self.f(self.a).block_until_ready()
      times.append(time.perf_counter() - start)
    return 2 * self.n**3 / statistics.median(times) / 1e12


def cnnjax_steps(config, data_dir: str | None, synthetic: bool = False, members=()
                 ) -> tuple[Callable[[int], None], object]:
  """(steps, run): ``steps(n)`` runs n steps (a multiple of ``run.steps_per_dispatch``) of ``config``'s train step
  as a run does (``train.setup``'s run: its pipeline and steps per call), blocking; ``synthetic``: one batch kept
  on the device instead (the step alone); ``members``: a population of these configs at once."""
  import jax

  from cnnjax import train
  run = train.setup(config, data_dir, members=members)
  steps_per_call = run.steps_per_dispatch
  state, rng = [run.backend.from_checkpoint(run.initial_state())], run.step_rng()
  next_input = run.pipeline.train_inputs(0)
  if synthetic:
    batch = next_input()
    next_input = lambda: batch  # noqa: E731 - one batch, already on the device
  fn = run.train_steps(steps_per_call)

  def steps(n: int) -> None:
    for _ in range(n // steps_per_call):
      state[0], metrics = fn(state[0], next_input(), rng)
    jax.block_until_ready(metrics)
  return steps, run


def population_rates(config, sizes: list[int], data_dir: str | None, windows: int, calls: int = 1) -> dict:
  """Member-images/s of ``config``'s run alone and of populations of ``sizes`` members (seeds 0, 1, ...; each
  arm ``calls`` calls of its steps per call per window, the arms alternating): medians, ratios to the run alone
  and every window's seconds. ``config`` must allow populations (the device pipeline, threefry2x32 keys)."""
  from cnnjax.config import apply_overrides
  arms = {}
  for members in [0, *sizes]:
    configs = tuple(apply_overrides(config, {'seed': seed}) for seed in range(members))
    steps, run = cnnjax_steps(config, data_dir, members=configs)
    steps(run.steps_per_dispatch)  # compiled and warmed up
    name = f'population of {members}' if members else 'alone'
    arms[name] = (functools.partial(steps, calls * run.steps_per_dispatch),
                  calls * run.steps_per_dispatch * max(members, 1) * config.batch_size)
  seconds = alternating_seconds({name: call for name, (call, _) in arms.items()}, windows)
  rates = {name: images / statistics.median(seconds[name]) for name, (_, images) in arms.items()}
  return {'member_images_per_second_median': {k: round(v) for k, v in rates.items()},
          'ratio_to_alone': {k: round(v / rates['alone'], 3) for k, v in rates.items()},
          'window_seconds': {k: [round(x, 3) for x in v] for k, v in seconds.items()}}
