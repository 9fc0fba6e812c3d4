"""Using what was trained: a workdir alone gives a classifier of raw images (the run's own fitting and
normalisation, its tested weights), --predict prints each file's top classes, and a workdir that cannot serve says
so in one line."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import cnnjax
from cnnjax import augment, errors, predict, records, train
from cnnjax.config import apply_overrides
from cnnjax.datasets import pets_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  """A binary run on a generated cats-vs-dogs folder at 16x16, its result and its folder."""
  from cnnjax.cli import load_experiment
  root = tmp_path_factory.mktemp('predict')
  pets_folder.write(str(root / 'pets'), per_class=10)
  config = apply_overrides(load_experiment('cats_vs_dogs').get_config(), {
      'data.name': f'folder:{root / "pets"}', 'data.image_size': 16, 'model.features': (8, 8), 'model.dense': (16,),
      'batch_size': 8, 'eval_batch_size': 8, 'num_train_steps': 6, 'eval_every_steps': 3,
      'checkpoint_every_steps': 3, 'data.val_fraction': 0.25, 'test_checkpoint': 'best_val'})
  result = train.train_and_evaluate(config, str(root / 'run'), str(root / 'data'))
  return result, root


def test_a_workdir_alone_classifies_raw_images_as_its_run_evaluated_them(trained):
  result, root = trained
  classifier = cnnjax.load(str(root / 'run'))
  assert classifier.record.classes == ('cat', 'dog') and classifier.record.head == 'binary'
  assert classifier.step == result.metrics['selected_step']  # the tested weights: the best validation step's
  paths = [str(root / 'pets' / c / f'{c}.{i}.jpg') for c in ('cat', 'dog') for i in (0, 1, 2)]
  probabilities = classifier.probabilities(paths)
  assert probabilities.shape == (6, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-6)
  run = result.run  # the same images through the run's own evaluation: the same logits
  normalized = augment.Preprocess(run.spec.mean, run.spec.std).normalize(classifier.inputs(paths))
  logits = run.model.apply(result.variables, normalized, train=False)[:, 0]
  np.testing.assert_allclose(probabilities[:, 1], jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
  assert classifier.top([paths[0]], k=1)[0][0][0] in ('cat', 'dog')


def test_predict_prints_each_files_top_classes_and_skips_what_is_not_an_image(trained):
  _, root = trained
  proc = subprocess.run([sys.executable, 'launch.py', f'--workdir={root / "run"}',
                         f'--predict={root / "pets" / "dog" / "dog.0.jpg"}', f'--predict={root / "pets" / "cat"}'],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[1].startswith(f'{root / "pets" / "dog" / "dog.0.jpg"}: ') and ' dog ' in f' {lines[1]} '
  assert any(line.endswith('cat.notes.jpg: skipped (not an image)') for line in lines)
  assert len(lines) == 1 + 1 + 10 + 4  # the heading, dog.0, the cat folder's 10 images and 4 bad files


def test_workdirs_that_cannot_serve_say_why_in_one_line(trained, tmp_path):
  _, root = trained
  with pytest.raises(errors.DataError, match='holds no trained cnnjax run'):
    predict.load(str(tmp_path))
  copy = tmp_path / 'run'
  shutil.copytree(root / 'run', copy)
  record = json.loads((copy / records.DATA_FILE).read_text())
  (copy / records.DATA_FILE).write_text(json.dumps({**record, 'schema': 2}))
  with pytest.raises(errors.DataError, match='newer than this cnnjax reads'):
    predict.load(str(copy))
  (copy / records.DATA_FILE).write_text(json.dumps(record))
  best = copy / 'best_checkpoint'
  step_dir = next(p for p in best.iterdir() if p.name.isdigit())
  victim = max((p for p in step_dir.rglob('*') if p.is_file() and 'manifest' not in p.name),
               key=lambda p: p.stat().st_size)
  victim.write_bytes(b'\0' * victim.stat().st_size)
  with pytest.raises(errors.DamagedFile, match='cannot be read'):
    predict.load(str(copy))
