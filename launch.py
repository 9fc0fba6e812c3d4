r"""Runs a named experiment:

  python launch.py --experiment=NAME --workdir=DIR [--config.FIELD=VALUE ...] [--data_dir=DIR]

NAME is a file experiments/NAME.py whose get_config() returns the config; any field can be overridden,
e.g. --config.model.stride=2. Re-running with the same workdir resumes from the latest checkpoint.
"""

import logging as logging_std
import os
import sys
import time

from absl import app, flags, logging

from cnnjax import files
from cnnjax.cli import format_config, load_experiment, parse_flags_with_experiment
from cnnjax.errors import CnnjaxError, DownloadTimeout

flags.DEFINE_string('experiment', 'shapes', 'Name of a config file in experiments/ (without .py).')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and metrics.jsonl.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: ~/tensorflow_datasets).')
flags.DEFINE_integer('sweep_index', None, 'Sweeps: run only point i (0-based), e.g. $SLURM_ARRAY_TASK_ID.')
flags.DEFINE_bool('report_only', False, 'Sweeps: rebuild report.md and plots from the finished points only.')
flags.DEFINE_bool('list_points', False, 'Sweeps: print the point names, one per line (index = line number), and exit.')
flags.DEFINE_multi_string('predict', None, 'Classify these image files (or every file in these folders) with the '
                          'trained run in --workdir and print each one\'s top classes; repeat the flag for several.')
flags.DEFINE_bool('analyze', False, 'Print per-layer shapes, params, FLOPs and receptive fields, then exit.')
flags.DEFINE_bool('overwrite', False, 'Move a previous run in --workdir aside (to WORKDIR.overwritten-TIME) and '
                  'start again, instead of resuming it.')
flags.DEFINE_string('out', None, 'Write what the finished run (or sweep) measured, stamped with this command, the '
                    'commit, machine and versions, as JSON here, e.g. results/experiments/shapes.json.')
flags.DEFINE_string('records', None, 'Also keep the run records (configs, metrics, results; no checkpoints) in this '
                    'directory, e.g. results/runs/NAME, from which --report_only rebuilds the report; --out then '
                    'stamps the commands that train it and rebuild it.')
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
  """Drops what libraries say that is expected and not the user's to act on: INFO records from orbax's and tfds's
  internals; jax's probe for a TPU on a machine without one; tfds's notes that a fresh data_dir holds no
  dataset_info.json yet and that it decodes images with PIL for want of OpenCV; and the tracebacks with which
  orbax and asyncio report a write that failed for lack of space or permission (cnnjax reports that in one
  line). Other warnings and errors still show."""

  EXPECTED = ('Unable to initialize backend', 'has no dataset_info.json', 'OpenCV is not installed')

  def filter(self, record: logging_std.LogRecord) -> bool:
    if any(text in record.getMessage() for text in self.EXPECTED) and record.levelno <= logging_std.WARNING:
      return False
    library = any(f'/{lib}/' in record.pathname for lib in ('orbax', 'tensorflow_datasets', 'asyncio'))
    if not library:
      return True
    if record.levelno < logging_std.WARNING:
      return False
    error = record.exc_info[1] if record.exc_info else Exception(record.getMessage())
    return files.os_errno(error) is None


def _quiet_unraisable(unraisable) -> None:
  """orbax closes its asyncio loops before tensorstore's callbacks have run: after a failed write each callback
  reports 'Event loop is closed'. That noise is dropped; anything else is reported as Python would."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    sys.__unraisablehook__(unraisable)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sys.unraisablehook = _quiet_unraisable
  if not FLAGS.workdir and not (FLAGS.analyze or FLAGS.list_points):
    raise app.UsageError('--workdir is required (except with --analyze or --list_points)')
  # TensorFlow (where TFDS prepares or reads tfrecord files) logs C++ notices, oneDNN's among them, which are not
  # the user's to act on; errors still show. TensorFlow 2.21 prints oneDNN's notice whatever TF_CPP_MIN_LOG_LEVEL
  # says, so its oneDNN kernels are turned off: here TensorFlow only reads and encodes records (JAX computes the
  # model), which oneDNN does not change.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  from cnnjax import compiler
  logging.info('XLA_FLAGS=%r', compiler.set_default_xla_flags(FLAGS.default_xla_flags))  # before any backend
  logging.info('Compilation cache: %r', compiler.set_compilation_cache(FLAGS.compilation_cache_dir))
  import jax  # after flag parsing and XLA_FLAGS: jax/tf imports are slow

  from cnnjax import parallel, predict, sweep

  if FLAGS.multihost:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  get_sweep = getattr(load_experiment(FLAGS.experiment), 'get_sweep', None)
  try:
    if FLAGS.predict:
      print(predict.report(FLAGS.workdir, FLAGS.predict))
    elif FLAGS.list_points:
      print(sweep.list_points(FLAGS.config, get_sweep))
    elif FLAGS.analyze:
      print(sweep.analyze(FLAGS.config, get_sweep, FLAGS.data_dir))
    else:
      sweep.validate_experiment(FLAGS.config, get_sweep, FLAGS.sweep_index, FLAGS.report_only)  # before the config
      if FLAGS.out:
        sweep.check_out(FLAGS.out)
      logging.info('Experiment %s; its config (override a field with --config.FIELD=VALUE):\n%s', FLAGS.experiment,
                   format_config(FLAGS.config))
      start = time.perf_counter()
      outcome = sweep.run_experiment(FLAGS.config, get_sweep, FLAGS.workdir, FLAGS.data_dir, FLAGS.sweep_index,
                                     FLAGS.report_only, FLAGS.overwrite)
      if FLAGS.sweep_index is None and jax.process_index() == 0:
        seconds = time.perf_counter() - start
        if FLAGS.records:
          sweep.keep_records(FLAGS.workdir, FLAGS.records)
        if FLAGS.out:
          sweep.write_out(FLAGS.out, FLAGS.experiment, outcome, FLAGS.workdir, seconds, FLAGS.records)
  except DownloadTimeout as e:  # the download's threads may retry for minutes: do not wait for them
    print(f'\n{e.heading}: {e}', file=sys.stderr, flush=True)  # a line of its own after the download's progress bar
    os._exit(e.exit_status)
  except CnnjaxError as e:  # every expected stop: one line, no traceback
    if e.exit_status == 0:
      logging.warning('%s: %s', e.heading, e)
    else:
      sys.exit(f'{e.heading}: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags_with_experiment)
