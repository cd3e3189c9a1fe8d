"""The metric writer: durable JSON lines, truncation on resume, TensorBoard."""

import json

from sgd_quad import metrics


def test_lines_are_written_only_on_flush(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(10, 'train', {'train/loss': 1.5})
  assert not (tmp_path / metrics.METRICS_FILE).exists()
  writer.flush()
  writer.write(20, 'eval', {'eval/raw/loss': 0.5})
  writer.close()
  records = metrics.read_metrics(str(tmp_path))
  assert records == [
    {'step': 10, 'kind': 'train', 'train/loss': 1.5},
    {'step': 20, 'kind': 'eval', 'eval/raw/loss': 0.5},
  ]
  assert metrics.read_metrics(str(tmp_path), 'eval') == records[1:]
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))


def test_truncate_after_drops_later_steps(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  for step in (100, 200, 300):
    writer.write(step, 'train', {'train/loss': float(step)})
  writer.flush()
  writer.truncate_after(200)
  writer.close()
  assert [r['step'] for r in metrics.read_metrics(str(tmp_path))] == [100, 200]


def test_non_finite_values_are_recorded_as_strings(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, 'train', {'train/loss': float('nan')})
  writer.close()
  line = (tmp_path / metrics.METRICS_FILE).read_text()
  assert json.loads(line)['train/loss'] == 'nan'


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=False)
  writer.write(1, 'train', {'train/loss': 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == []
