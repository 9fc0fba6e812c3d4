r"""Train-step benchmark: compile time, throughput, FLOP/s against a measured matmul peak, eval throughput,
input-pipeline stall, against the same CNN as plain Flax + optax and (with --vs_torch) PyTorch eager,
channels_last and torch.compile on the same model and batch, in one process.

  python benchmarks/bench.py                          # the flax mnist-example CNN, batch 128 and 512
  python benchmarks/bench.py --vs_torch --json=/tmp/bench.json
  python benchmarks/bench.py --experiment=shapes --config.model.variant=small --batch_sizes=128

The model is the experiment's (default `mnist`: conv32-relu-avgpool-conv64-relu-avgpool-dense256-dense10,
SGD with momentum), fed device-resident synthetic batches of its input shape. FLOPs are the closed-form
forward FLOPs (cnnjax.analysis) times 3 for forward + backward. Throughput is the median over windows; the
matmul peak is measured after each round of windows, and the arms' windows alternate, so that all see the same
machine state. Compile times are first-step seconds minus a steady step (cold: no persistent cache); ratios
are against the fastest PyTorch arm. Runs in ~5-8 minutes on 2 CPU cores with --vs_torch.
"""

import statistics

import numpy as np
from absl import app, flags
from timing import MatmulPeak, compile_seconds, steps_for, timed_windows

from cnnjax import files
from cnnjax.cli import parse_flags_with_experiment

flags.DEFINE_string('experiment', 'mnist', 'Experiment whose model and optimizer are benchmarked.')
flags.DEFINE_list('batch_sizes', ['128', '512'], 'Global batch sizes to measure.')
flags.DEFINE_integer('windows', 5, 'Timed windows per measurement (the median is reported).')
flags.DEFINE_float('window_seconds', 3.0, 'Approximate length of one timed window.')
flags.DEFINE_bool('vs_torch', False, 'Also time the PyTorch mirrors: eager, channels_last, compile.')
flags.DEFINE_bool('vs_flax', True, 'Also time the same CNN as a plain Flax module + optax + jax.jit (no cnnjax).')
flags.DEFINE_bool('pipeline', True, 'Measure the input-pipeline stall on the offline shapes dataset.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (the pipeline measurement generates shapes there).')
flags.DEFINE_string('json', None, 'Also write the results as JSON here.')
flags.DEFINE_bool('default_xla_flags', True, 'As in launch.py: add cnnjax.compiler.DEFAULT_XLA_FLAGS to $XLA_FLAGS.')
FLAGS = flags.FLAGS


def synthetic_batch(run, batch_size: int) -> dict:
  """Random normal images of the run's input shape; every target is the head's target of an all-zero example
  of the dataset (class 0, size 0, ...), which costs the step what any target does."""
  import jax
  import numpy as np

  features = run.pipeline.features
  zeros = {k: np.zeros([1, *[d or 1 for d in f.shape]], np.int64) for k, f in features.items()}
  target = np.asarray(run.head.target_array(features, run.config.data)(zeros))[0]
  n = jax.local_device_count()
  images = np.random.default_rng(0).normal(size=(n, batch_size // n, *run.info.image_shape)).astype(np.float32)
  return {'image': images, 'target': np.broadcast_to(target, (n, batch_size // n, *target.shape)).copy(),
          'mask': np.ones((n, batch_size // n), bool)}


class JaxRunner:
  """The cnnjax train and eval steps (``train.setup``'s) on synthetic, device-resident batches."""

  def __init__(self, config, batch_size: int):
    import jax

    from cnnjax import analysis, loop, models, train
    self.jax = jax
    config.batch_size = config.eval_batch_size = batch_size
    self.run = run = train.setup(config, FLAGS.data_dir, prepare=False)  # features only: synthetic batches
    shape = run.info.image_shape
    self.fwd_flops = analysis.totals(analysis.analyze(config.model, shape, run.info.num_outputs))['flops']
    self.num_params = models.count_params(run.model, shape)
    self.train_fn, self.eval_fn, self.backend = run.train_step, run.eval_step, run.backend
    self.host_batch = synthetic_batch(run, batch_size)
    self.batch = self.backend.put_batch(self.host_batch)
    init_rng, self.rng = run.keys()
    self.state = self.backend.from_checkpoint(run.init_state(init_rng))
    self.config, self.max_in_flight = config, loop.MAX_STEPS_IN_FLIGHT


  def train(self, steps: int) -> None:
    in_flight = []
    for _ in range(steps):  # as the training loop: at most loop.MAX_STEPS_IN_FLIGHT steps ahead
      self.state, metrics = self.train_fn(self.state, self.batch, self.rng)
      in_flight.append(metrics)
      if len(in_flight) > self.max_in_flight:
        self.jax.block_until_ready(in_flight.pop(0))
    self.jax.block_until_ready(metrics)

  def eval(self, steps: int) -> None:
    for _ in range(steps):  # one at a time, as loop.evaluate does
      self.jax.block_until_ready(self.eval_fn(self.state, self.batch))

  def train_from(self, iterator, steps: int) -> None:
    for _ in range(steps):
      self.state, metrics = self.train_fn(self.state, self.backend.put_batch(next(iterator)), self.rng)
    self.jax.block_until_ready(metrics)


class TorchRunner:
  """One PyTorch arm (eager NCHW, channels_last or torch.compile; benchmarks/torch_reference.py) of the same
  model, optimizer and batch, stepping on one synthetic batch."""

  def __init__(self, config, batch_size: int, shape, num_outputs: int, arm: str):
    import numpy as np
    import torch_reference
    self.trainer = torch_reference.Trainer(config, shape, num_outputs, arm)
    rng = np.random.default_rng(0)
    self.x = rng.normal(size=(batch_size, *shape)).astype(np.float32)
    self.y = rng.integers(0, num_outputs, batch_size)


  def train(self, steps: int) -> None:
    for _ in range(steps):
      self.trainer.train_step(self.x, self.y)


class PlainFlaxRunner:
  """The same CNN written as a plain Flax module with an optax optimizer and a jax.jit step (no cnnjax), on the
  same synthetic batch: the reference for cnnjax's compile time and step overhead."""

  def __init__(self, config, batch_size: int, shape, num_outputs: int):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from cnnjax import models, optim
    m = config.model
    pool = {'max': nn.max_pool, 'avg': nn.avg_pool}[m.pool]

    class Plain(nn.Module):
      @nn.compact
      def __call__(self, x):
        for f in models.conv_features(m):
          x = pool(nn.relu(nn.Conv(f, (m.kernel_size,) * 2)(x)), (2, 2), (2, 2))
        x = x.reshape(len(x), -1)
        for width in models.dense_widths(m):
          x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(num_outputs)(x)

    model = Plain()
    tx = optim.optimizer(config.optimizer, optim.schedule(config.optimizer, config.num_train_steps))
    rng = np.random.default_rng(0)
    self.x = jnp.asarray(rng.normal(size=(batch_size, *shape)).astype(np.float32))
    self.y = jnp.asarray(rng.integers(0, num_outputs, batch_size))
    self.params = model.init(jax.random.key(0), self.x[:1])
    self.opt_state = tx.init(self.params)

    def step(params, opt_state, x, y):
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()  # noqa: E731
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self.step, self.jax = jax.jit(step, donate_argnums=(0, 1)), jax


  def train(self, steps: int) -> None:
    for _ in range(steps):
      self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.x, self.y)
    self.jax.block_until_ready(loss)


def bench_batch(base_config, batch_size: int, peak: MatmulPeak) -> dict:
  config = base_config.copy_and_resolve_references()
  jx = JaxRunner(config, batch_size)
  row = {'batch_size': batch_size, 'params': jx.num_params, 'parallel': config.parallel,
         'dtype': config.model.dtype, 'microbatch': jx.run.microbatch_size, 'cpu_speedups': jx.run.cpu_speedups,
         'compile_s': compile_seconds(jx.train)}
  shape, outputs = jx.run.info.image_shape, jx.run.info.num_outputs
  runners = {'jax': jx}
  if FLAGS.vs_flax:
    runners['plain_flax'] = PlainFlaxRunner(config, batch_size, shape, outputs)
  if FLAGS.vs_torch:
    import torch_reference
    runners.update({arm: TorchRunner(config, batch_size, shape, outputs, arm) for arm in torch_reference.ARMS})
  for name, runner in runners.items():
    if name != 'jax':
      row[f'{name}_compile_s'] = compile_seconds(runner.train)
  steps = {name: steps_for(runner.train, FLAGS.window_seconds) for name, runner in runners.items()}
  times, peaks = {name: [] for name in runners}, []
  for _ in range(FLAGS.windows):  # alternate the arms (and the peak) window by window
    for name, runner in runners.items():
      times[name] += timed_windows(runner.train, steps[name], 1)
    peaks.append(peak.measure())
  row['train_img_s'] = batch_size / statistics.median(times['jax'])
  row['gflops'] = 3 * jx.fwd_flops * row['train_img_s'] / 1e9
  row['peak_gflops'] = 1000 * statistics.median(peaks)  # TFLOP/s -> GFLOP/s
  row['pct_peak'] = 100 * row['gflops'] / row['peak_gflops']
  n_eval = steps_for(jx.eval, FLAGS.window_seconds / 2)
  row['eval_img_s'] = batch_size / statistics.median(timed_windows(jx.eval, n_eval, FLAGS.windows))
  for name in runners:
    if name != 'jax':
      row[f'{name}_img_s'] = batch_size / statistics.median(times[name])
  torch_arms = [name for name in runners if name.startswith('torch_')]
  if torch_arms:
    best = max(torch_arms, key=lambda name: row[f'{name}_img_s'])
    row['best_torch'], row['jax_over_best_torch'] = best, row['train_img_s'] / row[f'{best}_img_s']
  if FLAGS.pipeline:
    row.update(pipeline_stall(config, jx, batch_size))
  return row


def pipeline_stall(config, jx: JaxRunner, batch_size: int) -> dict:
  """Throughput with the real host pipeline (offline `shapes` at the model's image size, cut to the model's
  channels) against the same steps on a device-resident batch."""
  import numpy as np

  from cnnjax import augment, data, train
  shapes = config.copy_and_resolve_references()
  size, channels = jx.run.info.image_shape[0], jx.run.info.image_shape[-1]
  shapes.data.name, shapes.data.image_size, shapes.data.pipeline = 'shapes', size, 'host'
  batches = train.setup(shapes, FLAGS.data_dir).pipeline.train_batches()
  normalize = augment.preprocessing(shapes.data, data.get_spec('shapes'))[0].normalize  # as the host step does
  converted = ({'image': np.asarray(normalize(b['image'][..., :channels])), 'target': b['target']} for b in batches)
  n = steps_for(lambda k: jx.train_from(converted, k), FLAGS.window_seconds)
  real = statistics.median(timed_windows(lambda k: jx.train_from(converted, k), n, 3))
  synthetic = statistics.median(timed_windows(jx.train, n, 3))
  return {'pipeline_img_s': batch_size / real, 'pipeline_stall_pct': float(np.clip(100 * (1 - synthetic / real),
                                                                                   0, 100))}


def main(argv):
  del argv
  from cnnjax import compiler
  xla_env = compiler.set_default_xla_flags(FLAGS.default_xla_flags)  # before JAX starts its backend
  compiler.set_compilation_cache('')  # compile times are cold compiles
  import jax
  peak = MatmulPeak()
  rows = [bench_batch(FLAGS.config, int(b), peak) for b in FLAGS.batch_sizes]
  device = f'{jax.devices()[0].platform} x{jax.device_count()} ({jax.devices()[0].device_kind})'
  print(f'\n{FLAGS.experiment} on {device}, jax {jax.__version__}, XLA_FLAGS={xla_env!r}')
  columns = [c for c in rows[0] if c not in ('params',)]
  print('| ' + ' | '.join(columns) + ' |\n|' + ' --- |' * len(columns))
  for row in rows:
    print('| ' + ' | '.join(f'{row[c]:.3g}' if isinstance(row[c], float) else str(row[c]) for c in columns) + ' |')
  if FLAGS.json:
    files.write_json(FLAGS.json, {'device': device, 'jax': jax.__version__, 'xla_flags': xla_env, 'rows': rows},
                     sort_keys=False)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags_with_experiment)
