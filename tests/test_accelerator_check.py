"""benchmarks/accelerator_check.py's smoke mode: every section runs at toy sizes on this CPU, so the script that
a GPU machine runs first does not rot between the times one is at hand (its numbers are measurements, not
asserted here; its agreement section's differences are)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_smoke_mode_runs_every_section_and_writes_one_json(data_dir, tmp_path):
  out = tmp_path / 'accelerator.json'
  proc = subprocess.run([sys.executable, 'benchmarks/accelerator_check.py', '--smoke', f'--data_dir={data_dir}',
                         f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert json.loads(proc.stdout) == result
  sections = result['sections']
  assert set(sections) == {'tests', 'agreement', 'throughput', 'population', 'race', 'speedrun'}
  assert not [name for name, s in sections.items() if 'error' in s], sections
  assert sections['tests']['returncode'] == 0 and sections['tests']['passed'] >= 1
  for pair in ('pmap_vs_shard_map', 'cpu_speedups_on_vs_off'):  # the same steps, two ways: float32 rounding apart
    assert sections['agreement'][pair]['max_abs_difference'] < 1e-5, sections['agreement']
  cnnjax_rows = {row['dtype']: row for row in sections['throughput']['rows'] if row['arm'] == 'cnnjax'}
  assert set(cnnjax_rows) == {'float32', 'bfloat16'} and all(r['images_per_s'] > 0 for r in cnnjax_rows.values())
  assert set(sections['population']['member_images_per_second_median']) == {'alone', 'population of 2'}
  (run,) = sections['race']['arms']['cnnjax_device']['runs']
  assert [e['step'] for e in run] == [sections['race']['steps']]  # one epoch: one evaluation, at its end
  speed = sections['speedrun']
  assert speed['seeds'] == 1 and speed['seconds']['per_seed'][0] > 0
  assert 0 <= speed['test_accuracy']['mean'] <= 1
  for field in ('command', 'commit', 'machine', 'versions', 'card'):
    assert result[field]
