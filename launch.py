r"""Runs a named experiment:

  python launch.py --experiment=NAME --workdir=DIR [--config.FIELD=VALUE ...] [--data_dir=DIR]

NAME is a file experiments/NAME.py whose get_config() returns the config; any field can be overridden,
e.g. --config.model.stride=2. Re-running with the same workdir resumes from the latest checkpoint.
"""

import logging as logging_std
import sys

from absl import app, flags, logging

from cnnjax.config import ConfigError, load_experiment, parse_flags_with_experiment

flags.DEFINE_string('experiment', 'shapes', 'Name of a config file in experiments/ (without .py).')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and metrics.jsonl.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: ~/tensorflow_datasets).')
flags.DEFINE_integer('sweep_index', None, 'Sweeps: run only point i (0-based), e.g. $SLURM_ARRAY_TASK_ID.')
flags.DEFINE_bool('report_only', False, 'Sweeps: rebuild report.md and plots from the finished points only.')
flags.DEFINE_bool('list_points', False, 'Sweeps: print the point names, one per line (index = line number), and exit.')
flags.DEFINE_bool('analyze', False, 'Print per-layer shapes, params, FLOPs and receptive fields, then exit.')
flags.DEFINE_bool('overwrite', False, 'Move a previous run in --workdir aside (to WORKDIR.overwritten-TIME) and '
                  'start again, instead of resuming it.')
flags.DEFINE_bool('multihost', False, 'Join a multi-process run (jax.distributed.initialize); the coordinator comes '
                  'from the flags below or from the cluster environment (SLURM, TPU pods, Kubernetes).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..num_processes-1.')
flags.DEFINE_bool('default_xla_flags', True, 'Add cnnjax.compiler.DEFAULT_XLA_FLAGS (YNNPACK dots on CPU) to '
                  '$XLA_FLAGS; --nodefault_xla_flags runs XLA\'s own CPU kernels.')
flags.DEFINE_string('compilation_cache_dir', None, 'Persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR '
                    'or ~/.cache/cnnjax/jax_compilation_cache); --compilation_cache_dir= turns it off.')
FLAGS = flags.FLAGS


class _QuietLibraries(logging_std.Filter):
  """Drops INFO records from orbax's and tfds's internals; warnings and errors still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    noisy = any(f'/{lib}/' in record.pathname for lib in ('orbax', 'tensorflow_datasets'))
    return record.levelno >= logging_std.WARNING or not noisy


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if not FLAGS.workdir and not (FLAGS.analyze or FLAGS.list_points):
    raise app.UsageError('--workdir is required (except with --analyze or --list_points)')
  from cnnjax import compiler
  logging.info('XLA_FLAGS=%r', compiler.set_default_xla_flags(FLAGS.default_xla_flags))  # before any backend
  logging.info('Compilation cache: %r', compiler.set_compilation_cache(FLAGS.compilation_cache_dir))
  from cnnjax import checkpointing, parallel, sweep, train  # after flag parsing: jax/tf imports are slow

  if FLAGS.multihost:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  get_sweep = getattr(load_experiment(FLAGS.experiment), 'get_sweep', None)
  try:
    if FLAGS.list_points:
      print('\n'.join(p.name for p in sweep.expand(get_sweep(), FLAGS.config.seeds, FLAGS.config.seed))
            if get_sweep else '')
    elif FLAGS.analyze:
      print(sweep.analyze(FLAGS.config, get_sweep, FLAGS.data_dir))
    elif get_sweep:
      sweep.run(FLAGS.config, get_sweep, FLAGS.workdir, FLAGS.data_dir, FLAGS.sweep_index, FLAGS.report_only,
                FLAGS.overwrite)
    elif FLAGS.sweep_index is not None or FLAGS.report_only:
      raise ConfigError(f'--experiment={FLAGS.experiment} has no get_sweep(); drop --sweep_index/--report_only')
    else:
      logging.info('Experiment %s, config:\n%s', FLAGS.experiment, FLAGS.config)
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.data_dir, FLAGS.overwrite)
  except ConfigError as e:
    sys.exit(f'Invalid config: {e}')
  except train.NonFiniteLoss as e:
    sys.exit(f'Stopped: {e}')
  except checkpointing.Preempted as e:
    logging.warning('%s', e)  # a clean stop: exit status 0


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags_with_experiment)
