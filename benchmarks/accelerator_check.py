r"""The accelerator check: the first thing to run whenever a GPU (or TPU) machine is at hand. In one process, in
under 8 minutes on one GPU, it measures and prints one JSON, written to results/accelerator/<card>.json:

  tests       the tests of the paths that differ on an accelerator (XLA's convolution and gradient rules, the
              max-pool VJP, BatchNorm, the device pipeline), run there (pytest; those that need TensorFlow
              Datasets skip, saying so);
  agreement   on the real device: pmap against shard_map, and cnnjax's CPU forms (cpu_speedups=on: two-step bias,
              NHWC/HWIO conv gradients, BatchNorm reductions, max pooling's per-element gradient) against the
              plain ones an accelerator uses, 20 steps of the fashion_mnist recipe each: max |difference| of
              the parameters;
  throughput  train images/s of cnnjax (the device pipeline, its steps per call) against PyTorch (eager,
              channels_last, torch.compile, data on the GPU), float32 and bfloat16, on the `mnist` and
              `fashion_mnist` models at batch 128, 512 and 2048; model FLOP/s against the card's peak (MFU) and
              against a matmul measured beside the arms; compile seconds of each arm;
  population  member-images/s of the pooling sweep's model alone and in populations of 1, 3, 9 and 27 members
              (one vmapped program: what --config.population=auto decides by; docs/performance.md);
  race        seconds to 0.92 Fashion-MNIST test accuracy: cnnjax's fashion_mnist recipe as a run (device
              pipeline, checkpoints and logs) against the same recipe in PyTorch with its data on the GPU;
  speedrun    fashion_mnist_speedrun over 5 seeds, each timed from its call to its test accuracy, compilation
              included (benchmarks/speedrun.py; the goal on one H100: <= 3 s).

The device machine has jax, flax, optax, orbax, numpy, scipy, torch, pytest and tensorboard, but neither
ml-collections nor TensorFlow (Datasets), and no network. Prepare what it needs here (ml-collections' wheel and
the Fashion-MNIST arrays that the device pipeline reads with numpy alone, ~55 MB of the 64 MiB a call carries):

  pip download --no-deps --only-binary=:all: -d carry/wheels ml-collections
  python benchmarks/accelerator_check.py --prepare_carry=carry     # writes carry/data, checks the size

then run it there (the device tool, carrying `carry`; the JSON comes back under $OUT):

  pip install --no-index --no-deps carry/wheels/*.whl && PYTHONPATH=. python3 \
    benchmarks/accelerator_check.py --data_dir=carry/data --out=$OUT/accelerator.json

and commit it as results/accelerator/<card>.json. `--smoke` runs every section at toy sizes on the `digits`
data, in seconds on a CPU (the tests run it, so that it never rots).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags
from timing import MatmulPeak, cnnjax_steps, compile_seconds, steps_for, timed_windows

from cnnjax.cli import load_experiment
from cnnjax.config import apply_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_bool('smoke', False, 'Every section at toy sizes on the digits data (seconds on a CPU).')
SECTIONS = ('tests', 'agreement', 'throughput', 'population', 'race', 'speedrun')
flags.DEFINE_list('sections', list(SECTIONS), 'Sections to run, in this order.')
flags.DEFINE_string('data_dir', None, 'The data directory holding cnnjax_arrays/ (TFDS\'s default if unset).')
flags.DEFINE_string('out', None, 'Where the JSON goes (default results/accelerator/<card>.json; none with --smoke).')
flags.DEFINE_string('prepare_carry', None, 'Write the data the device machine needs to DIR/data and stop.')
FLAGS = flags.FLAGS

# Dense peak TFLOP/s from NVIDIA's data sheets (SXM parts): float32 arms are measured against the TF32 tensor-core
# peak (XLA and cuDNN convolve float32 in TF32 on these cards by default), bfloat16 arms against the BF16 one.
PEAK_TFLOPS = {'H200': {'float32': 494.7, 'bfloat16': 989.4}, 'H100': {'float32': 494.7, 'bfloat16': 989.4},
               'A100': {'float32': 156.0, 'bfloat16': 312.0}}
DTYPES = ('float32', 'bfloat16')
DATA = 'fashion_mnist'  # every section's data; the `mnist` model trains on it too (same shapes)


def sizes() -> dict:
  """What each section runs: full, or toy sizes under --smoke."""
  if FLAGS.smoke:
    return {'data': 'digits', 'models': ('mnist',), 'batches': (16,), 'windows': 2, 'window_s': 0.1,
            'torch_arms': ('torch_eager',), 'steps': 4, 'epochs': 1, 'target': 0.5, 'population': [2],
            'speedrun': {'seeds': 1, 'overrides': {'num_train_steps': 4, 'eval_every_steps': 4,
                                                   'checkpoint_every_steps': 4, 'log_every_steps': 4}},
            'tests': ['tests/test_ops.py', '-k', 'max_pool_gradient']}
  return {'data': DATA, 'models': ('mnist', 'fashion_mnist'), 'batches': (128, 512, 2048), 'windows': 5,
          'window_s': 0.5, 'torch_arms': ('torch_eager', 'torch_channels_last', 'torch_compile'), 'steps': 20,
          'epochs': 4, 'target': 0.92, 'population': [1, 3, 9, 27], 'speedrun': {'seeds': 5, 'overrides': {}},
          'tests': ['tests/test_ops.py', 'tests/test_models.py', 'tests/test_device_pipeline.py',
                    'tests/test_train.py']}


def config_of(experiment: str, **overrides):
  """The experiment's config on the check's data and device pipeline, with ``overrides``."""
  return apply_overrides(load_experiment(experiment).get_config(),
                         {'data.name': sizes()['data'], 'data.pipeline': 'device', **overrides})


def card() -> tuple[str, dict | None]:
  """(a file name for this accelerator, its peak TFLOP/s by dtype or None where the table lacks it)."""
  import jax
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in PEAK_TFLOPS.items() if k in kind.upper()), None)
  return re.sub(r'[^a-z0-9]+', '-', kind.lower()).strip('-') or jax.default_backend(), peak


def torch_device() -> str | None:
  """'cuda' where PyTorch sees a GPU, 'cpu' on a CPU-only machine, None without PyTorch."""
  try:
    import torch
  except ImportError:
    return None
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def speedrun() -> dict:
  """fashion_mnist_speedrun's seeds, each timed from its call to its test accuracy, compilation included."""
  from racing import summary_over_seeds, time_run
  s = sizes()['speedrun']
  config = config_of('fashion_mnist_speedrun', **s['overrides'])
  runs = [time_run(apply_overrides(config, {'seed': seed}), FLAGS.data_dir) for seed in range(s['seeds'])]
  return {'experiment': 'fashion_mnist_speedrun', 'steps': config.num_train_steps, **summary_over_seeds(runs)}


# ---------------------------------------------------------------------------------------------------------
# Sections.

def run_tests() -> dict:
  """The accelerator-path tests, run in a subprocess on this machine's default device."""
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *sizes()['tests']],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  lines = proc.stdout.strip().splitlines()
  counts = {k: int(n) for n, k in re.findall(r'(\d+) (passed|failed|skipped|errors?)', lines[-1] if lines else '')}
  return {'returncode': proc.returncode, **counts, 'seconds': round(time.perf_counter() - start, 1),
          'failed_tests': [line for line in lines if line.startswith(('FAILED', 'ERROR'))],
          'skip_reasons': sorted({line.split(': ', 1)[-1] for line in lines if line.startswith('SKIPPED')})}


def final_params(config) -> dict:
  """The parameters after ``sizes()['steps']`` steps of ``config`` (one step per call), as host arrays."""
  import jax

  from cnnjax import train
  run = train.setup(apply_overrides(config, {'steps_per_dispatch': 1}), FLAGS.data_dir)
  init, rng = run.keys()
  state = run.backend.from_checkpoint(run.init_state(init))
  for _ in range(sizes()['steps']):
    state, _ = run.train_step(state, run.pipeline.train_inputs(0)(), rng)
  return jax.device_get(run.backend.to_checkpoint(state).params)


def agreement() -> dict:
  """Max |difference| of the parameters after the same steps: pmap vs shard_map, CPU forms vs plain forms."""
  import jax
  import numpy as np
  experiment = 'fashion_mnist' if not FLAGS.smoke else 'mnist'
  pairs = {'pmap_vs_shard_map': ({'parallel': 'pmap'}, {'parallel': 'shard_map'}),
           'cpu_speedups_on_vs_off': ({'cpu_speedups': 'on'}, {'cpu_speedups': 'off'})}
  out = {}
  for name, (a, b) in pairs.items():
    pa, pb = (final_params(config_of(experiment, **o)) for o in (a, b))
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), pa, pb))
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(pa))
    out[name] = {'max_abs_difference': max(diffs), 'largest_parameter': scale, 'steps': sizes()['steps']}
  return {'experiment': experiment, **out}


def torch_runner(config, arm: str, batch: int, shape, outputs: int, dtype: str, device: str):
  """n -> n PyTorch steps (blocking) on batches drawn from random data resident on ``device``."""
  import torch
  import torch_reference
  trainer = torch_reference.Trainer(config, shape, outputs, arm, device, bf16=dtype == 'bfloat16')
  images = torch.randn(4 * batch, *shape, device=device)
  labels = torch.randint(0, outputs, (4 * batch,), device=device)

  def steps(n: int) -> None:
    for _ in range(n):
      idx = torch.randint(0, len(images), (batch,), device=device)
      trainer.train_step(images[idx], labels[idx])
    trainer.synchronize()
  return steps


def throughput_rows(experiment: str, batch: int, peak: dict | None, matmul: dict) -> list[dict]:
  """One row per arm of one model and batch size: images/s (median of alternating windows), compile seconds,
  model TFLOP/s, MFU."""
  from cnnjax import analysis
  s = sizes()
  base = config_of(experiment, batch_size=batch, eval_batch_size=batch)
  arms = {}
  for dtype in DTYPES:
    steps, run = cnnjax_steps(apply_overrides(base, {'model.dtype': dtype}), FLAGS.data_dir)
    arms[('cnnjax', dtype)] = (steps, run.steps_per_dispatch)
  device = torch_device()
  if device:
    for arm in s['torch_arms']:
      for dtype in DTYPES:
        arms[(arm, dtype)] = (torch_runner(base, arm, batch, run.info.image_shape, run.info.num_outputs, dtype,
                                           device), 1)
  fwd = analysis.totals(analysis.analyze(base.model, run.info.image_shape, run.info.num_outputs))['flops']
  compiled = {k: compile_seconds(f, m) for k, (f, m) in arms.items()}
  counts = {k: steps_for(f, s['window_s'], m) for k, (f, m) in arms.items()}
  seconds = {k: [] for k in arms}
  for _ in range(s['windows']):  # arms alternate window by window; the matmul peaks between the rounds
    for k, (f, _) in arms.items():
      seconds[k] += timed_windows(f, counts[k], 1)
    for dtype in DTYPES:
      matmul[dtype].append(matmul[f'_{dtype}'].measure())
  rows = []
  for (arm, dtype), per_step in seconds.items():
    images = batch / statistics.median(per_step)
    tflops = 3 * fwd * images / 1e12  # forward + backward
    rows.append({'model': experiment, 'batch': batch, 'arm': arm, 'dtype': dtype, 'images_per_s': round(images),
                 'compile_s': round(compiled[(arm, dtype)], 2), 'model_tflops': round(tflops, 3),
                 'mfu_pct': round(100 * tflops / peak[dtype], 3) if peak else None,
                 'pct_of_matmul': round(100 * tflops / statistics.median(matmul[dtype]), 2)})
  return rows


def throughput(peak: dict | None) -> dict:
  """Every model x batch x arm row, and the matmul TFLOP/s measured beside them."""
  matmul = {d: [] for d in DTYPES} | {f'_{d}': MatmulPeak(512 if FLAGS.smoke else 8192, d) for d in DTYPES}
  rows = [row for experiment in sizes()['models'] for batch in sizes()['batches']
          for row in throughput_rows(experiment, batch, peak, matmul)]
  return {'forward_flops': 'closed form (cnnjax.analysis), x3 for a train step', 'rows': rows,
          'matmul_tflops': {d: round(statistics.median(matmul[d]), 1) for d in DTYPES}}


def population() -> dict:
  """Member-images/s alone and in populations (``timing.population_rates``) of the pooling sweep's model."""
  from timing import population_rates
  s = sizes()
  config = config_of('pooling', **{'data.name': s['data'], 'rng_impl': 'threefry2x32'})
  return {'experiment': 'pooling', 'dataset': s['data'], 'batch_size': config.batch_size,
          **population_rates(config, s['population'], FLAGS.data_dir, s['windows'])}


def race() -> dict:
  """Seconds to the target test accuracy, cnnjax's run against the PyTorch mirror with its data on the device."""
  from racing import normalised, race_config, run_cnnjax, run_torch, summarize
  s = sizes()
  config, run = race_config(config_of('fashion_mnist' if not FLAGS.smoke else 'mnist'), FLAGS.data_dir, s['epochs'])
  arms = {'cnnjax_device': lambda: run_cnnjax(config, FLAGS.data_dir)}
  device = torch_device()
  if device:
    train_data, test_data = normalised(run, 'train'), normalised(run, 'test')
    for arm in s['torch_arms']:
      arms[arm] = lambda arm=arm: run_torch(config, arm, train_data, test_data, run.info.image_shape,
                                            run.info.num_outputs, device)
  return {'target': s['target'], 'epochs': s['epochs'], 'steps': config.num_train_steps,
          'arms': {name: summarize([arm()], s['target']) for name, arm in arms.items()}}


# ---------------------------------------------------------------------------------------------------------

def prepare_carry(directory: str) -> None:
  """Writes the Fashion-MNIST arrays (prepared here first if need be) to DIRECTORY/data and checks the size of
  DIRECTORY against what one call carries."""
  from cnnjax import arrays, train
  config = apply_overrides(load_experiment('fashion_mnist').get_config(), {'data.pipeline': 'device'})
  train.setup(config, FLAGS.data_dir)
  source = arrays.location(config.data, FLAGS.data_dir)
  target = os.path.join(directory, 'data', arrays.ARRAYS_DIR, os.path.basename(source))
  shutil.rmtree(target, ignore_errors=True)
  shutil.copytree(source, target)
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(directory) for f in names)
  print(f'{directory}: {size / 2**20:.1f} MiB (a call carries at most 64 MiB)')
  if not any(name.endswith('.whl') for name in os.listdir(os.path.join(directory, 'wheels'))
             if os.path.isdir(os.path.join(directory, 'wheels'))):
    print(f'no wheels in {directory}/wheels: pip download --no-deps --only-binary=:all: -d {directory}/wheels '
          'ml-collections')


def main(argv):
  del argv
  from cnnjax import compiler
  compiler.set_default_xla_flags()
  compiler.set_compilation_cache('')  # compile seconds are cold compiles
  if FLAGS.prepare_carry:
    prepare_carry(FLAGS.prepare_carry)
    return
  unknown = set(FLAGS.sections) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f'--sections: {sorted(unknown)} unknown; choose from {", ".join(SECTIONS)}')
  from cnnjax import stamp
  name, peak = card()
  result = {**stamp.stamp(), 'card': name, 'peak_tflops': peak, 'torch': torch_version(), 'smoke': FLAGS.smoke,
            'sections': {}}
  start = time.perf_counter()
  sections = {'tests': run_tests, 'agreement': agreement, 'throughput': lambda: throughput(peak),
              'population': population, 'race': race, 'speedrun': speedrun}
  for section in FLAGS.sections:
    began = time.perf_counter()
    try:  # one section's failure is a finding: the others still run; stdout is the JSON's alone
      with contextlib.redirect_stdout(sys.stderr):
        result['sections'][section] = sections[section]()
    except Exception as e:  # noqa: BLE001
      result['sections'][section] = {'error': f'{type(e).__name__}: {str(e)[:500]}'}
    result['sections'][section]['section_seconds'] = round(time.perf_counter() - began, 1)
    print(f'{section}: {result["sections"][section]["section_seconds"]} s', file=sys.stderr, flush=True)
  result['seconds'] = round(time.perf_counter() - start, 1)
  print(json.dumps(result, indent=1))
  out = FLAGS.out or (None if FLAGS.smoke else os.path.join(ROOT, 'results', 'accelerator', f'{name}.json'))
  stamp.write(out, result)


def torch_version() -> str | None:
  with contextlib.suppress(ImportError):
    import torch
    return f'{torch.__version__} (cuda {torch.version.cuda})'
  return None


if __name__ == '__main__':
  app.run(main)
