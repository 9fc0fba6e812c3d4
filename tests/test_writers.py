"""writers: metrics.jsonl, TensorBoard events without TensorFlow, the log line, the progress line."""

import json
import subprocess
import sys

import pytest

from cnnjax import writers


def test_tensorboard_events_are_written_without_tensorflow(tmp_path):
  script = ('import sys; sys.modules["tensorflow"] = None  # importing it would fail\n'
            'from cnnjax import writers\n'
            f'w = writers.TensorBoardWriter({str(tmp_path)!r})\n'
            'w.write_scalars(3, {"loss": 0.5, "accuracy": 0.25}); w.write_scalars(7, {"loss": 0.125}); w.close()\n')
  subprocess.run([sys.executable, '-c', script], check=True)
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(tmp_path))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars('loss')] == [(3, 0.5), (7, 0.125)]
  assert [(e.step, e.value) for e in events.Scalars('accuracy')] == [(3, 0.25)]


def test_jsonl_rows_and_the_log_line(tmp_path, caplog):
  writer = writers.create_writer(str(tmp_path))
  with caplog.at_level('INFO'):
    writer.write_scalars(5, {'train_loss': 1.5, 'a': 2})
    writer.write_scalars(5, {'train_loss': 9.0, 'b': 1})  # a metric once per step
  writer.close()
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [{k: v for k, v in r.items() if k != 'time'} for r in rows] == [{'step': 5, 'train_loss': 1.5, 'a': 2.0},
                                                                        {'step': 5, 'b': 1.0}]
  assert '[5] a=2, train_loss=1.5' in caplog.text


@pytest.mark.parametrize('seconds,text', [(0.4, '0s'), (45, '45s'), (200, '3m 20s'), (7500, '2h 05m')])
def test_duration(seconds, text):
  assert writers.duration(seconds) == text


def test_progress_logs_speed_and_time_left_and_writes_steps_per_sec(tmp_path, caplog, monkeypatch):
  """The clock starts when the first call (step 210, after 30 s of compilation) returns: time left counts steps
  at the measured speed, not the compilation."""
  clock = iter([100.0, 130.0, 139.0, 144.0])  # start, the first call's return, then two reports
  monkeypatch.setattr(writers.time, 'monotonic', lambda: next(clock))
  writer = writers.create_writer(str(tmp_path))
  progress = writers.Progress(num_steps=1000, every=100, writer=writer, start_step=200)
  with caplog.at_level('INFO'):
    for step in range(210, 401, 10):  # ten steps a call
      progress(step)
  writer.close()
  assert 'Step 300/1000 (30%), 10.0 steps/s, 1m 10s left' in caplog.text  # 90 steps in 9 s; 700 to go
  assert 'Step 400/1000 (40%), 20.0 steps/s, 30s left' in caplog.text
  assert 'steps_per_sec=' not in caplog.text  # said once, in the progress line
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [(r['step'], r['steps_per_sec']) for r in rows] == [(300, 10.0), (400, 20.0)]


def test_a_first_call_that_ends_on_a_logged_step_says_it_includes_compilation(tmp_path, caplog, monkeypatch):
  clock = iter([0.0, 45.0, 55.0])  # 45 s for steps 1-10, compilation included; then 10 steps in 10 s
  monkeypatch.setattr(writers.time, 'monotonic', lambda: next(clock))
  writer = writers.create_writer(str(tmp_path))
  progress = writers.Progress(num_steps=100, every=10, writer=writer)
  with caplog.at_level('INFO'):
    progress(10)
    progress(20)
  writer.close()
  assert 'Step 10/100 (10%); the first call took 45s, compilation included' in caplog.text
  assert 'Step 20/100 (20%), 1.0 steps/s, 1m 20s left' in caplog.text
