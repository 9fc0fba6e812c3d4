r"""What README's first command costs on a fresh machine, before and after a change: the size of the virtual
environment `pip install -e .` makes, the install's wall time, and the main job's (the `shapes` experiment on an
empty data_dir, so the dataset is generated too) wall time and test accuracy, each arm in a fresh venv and a
fresh copy of its commit's tree.

  python benchmarks/install_size.py --before=09c3d81 --out=results/install/cpu.json

pip's download cache is used as it is (warm on a machine that installed cnnjax before), so install times are
unpacking and linking, not downloads. Arms run one after the other (minutes each): compare sizes, and read the
times as this machine's at that moment.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string('before', None, 'The commit to compare with (git ref).', required=True)
flags.DEFINE_string('after', 'HEAD', 'The commit measured as after (git ref; default HEAD).')
flags.DEFINE_string('out', None, 'Write the results here as JSON.')
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _size_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names
             if not os.path.islink(os.path.join(d, f))) / 2**20


def measure(ref: str, work: str) -> dict:
  """Install commit ``ref`` into a fresh venv under ``work`` and run its main job there."""
  src, venv, data = (os.path.join(work, name) for name in ('src', 'venv', 'data'))
  os.makedirs(src)
  archive = subprocess.run(['git', 'archive', ref], cwd=ROOT, capture_output=True, check=True).stdout
  subprocess.run(['tar', '-x', '-C', src], input=archive, check=True)
  subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
  python = os.path.join(venv, 'bin', 'python')
  start = time.perf_counter()
  subprocess.run([python, '-m', 'pip', 'install', '-q', '-e', '.'], cwd=src, check=True, capture_output=True)
  install_s = time.perf_counter() - start
  packages = subprocess.run([python, '-m', 'pip', 'list', '--format=freeze'], capture_output=True, text=True,
                            check=True).stdout.split()
  start = time.perf_counter()
  job = subprocess.run([python, 'launch.py', '--experiment=shapes', f'--workdir={os.path.join(work, "run")}',
                        f'--data_dir={data}', '--compilation_cache_dir='], cwd=src, capture_output=True, text=True)
  job_s = time.perf_counter() - start
  accuracy = re.findall(r'test_accuracy=([0-9.]+)', job.stderr)
  return {'commit': subprocess.run(['git', 'rev-parse', '--short', ref], cwd=ROOT, capture_output=True, text=True,
                                   check=True).stdout.strip(),
          'venv_mb': round(_size_mb(venv)), 'packages': len(packages),
          'tensorflow': next((p for p in packages if re.match(r'tensorflow([-_]cpu)?==', p.lower())), None),
          'install_s': round(install_s, 1), 'main_job_s': round(job_s, 1), 'main_job_returncode': job.returncode,
          'test_accuracy': float(accuracy[-1]) if accuracy else None}


def main(argv):
  del argv
  from cnnjax import stamp
  rows = {}
  for name, ref in (('before', FLAGS.before), ('after', FLAGS.after)):
    work = tempfile.mkdtemp(prefix=f'cnnjax-install-{name}-')
    try:
      rows[name] = measure(ref, work)
    finally:
      shutil.rmtree(work, ignore_errors=True)
    print(name, rows[name], flush=True)
  result = {**stamp.stamp(), 'arms': rows}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  app.run(main)
