"""Benchmark: training throughput on 1 and 4 CPU devices, in 1 and 2 processes.

  python -m sgd_quad.benchmarks.scaling [--layouts=1x1,1x4,2x2] [--steps=30]

Each layout PxD runs the digits config's training steps in P processes with
D (fake) CPU devices each, started like a real run: several processes meet
through `sgd_quad.distributed.initialize` on a localhost port and exchange
gradients through gloo. Every process builds only its rows of each global
batch (from the same stream as the real run, background reading included),
assembles them into the global batch and calls the jitted train step, and
asks JAX's preemption service whether to stop, exactly as the training loop
does. After a warm-up, process 0 times `--windows` windows of `--steps`
steps each; then the same number of train steps alone, on one batch already
on the devices. The report gives the median steps/s and its spread of both
per layout, and ratios. The same global batch on every layout means 1x4 vs
2x2 isolates the cost of the process boundary: gloo's collectives over TCP
instead of in-process ones (the gradient all-reduce, and one per BatchNorm
layer for global batch statistics). The distributed path adds nothing else
when the loop runs as fast as the step alone in 2x2 as in 1x4.

On a machine with fewer cores than devices, fake devices share cores, so
1x4 vs 1x1 shows the per-device split's overhead, not a speed-up.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time

from absl import app, flags

_LAYOUTS = flags.DEFINE_list(
  'layouts', ['1x1', '1x4', '2x2'], 'PROCESSESxDEVICES layouts to measure.'
)
_MODEL = flags.DEFINE_string('model', 'resnet_digits', 'Model of the run.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Steps per timed window.')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows per layout.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed steps after compiling.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'tfds dir of the digits.')
_WORKER = flags.DEFINE_string(
  'worker', None, '(internal) PROCESSES:INDEX:PORT of a worker process.'
)


def _config():
  from configs import digits as digits_config

  config = digits_config.get_config()
  config.data.data_dir = _DATA_DIR.value
  config.model.name = _MODEL.value
  config.batch_size = _BATCH.value
  return config


def _worker(spec: str):
  """Times the steps of one process; process 0 prints a RESULT line."""
  processes, index, port = (int(x) for x in spec.split(':'))
  from sgd_quad import distributed

  if processes > 1:
    distributed.initialize(f'localhost:{port}', processes, index, timeout_s=120)
  import jax
  from jax.experimental import multihost_utils

  from sgd_quad import config_lib, trainer

  config = _config()
  config_lib.validate(
    config,
    device_count=jax.device_count(),
    process_count=jax.process_count(),
  )
  setup = trainer.build(config)
  state = trainer.init_state(setup)
  total = _WARMUP.value + _WINDOWS.value * _STEPS.value
  batches = setup.datasets.train.iterate(0, total)
  windows = []
  for step in range(1, total + 1):
    if step == _WARMUP.value + 1 or (
      step > _WARMUP.value and (step - _WARMUP.value - 1) % _STEPS.value == 0
    ):
      jax.block_until_ready(state)
      start = time.perf_counter()
    state, _ = setup.train_step(state, trainer._to_global(setup, next(batches)))
    if processes > 1:
      multihost_utils.reached_preemption_sync_point(step)
    if step > _WARMUP.value and (step - _WARMUP.value) % _STEPS.value == 0:
      jax.block_until_ready(state)
      windows.append(_STEPS.value / (time.perf_counter() - start))

  # The step alone, on one batch already on the devices: what remains is
  # compute and the step's own collectives.
  batch = trainer._to_global(setup, setup.datasets.train.batch(0))
  step_only = []
  for _ in range(_WINDOWS.value):
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, _ = setup.train_step(state, batch)
    jax.block_until_ready(state)
    step_only.append(_STEPS.value / (time.perf_counter() - start))
  if jax.process_index() == 0:
    result = {'loop': windows, 'step': step_only}
    print('RESULT ' + json.dumps(result), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def measure(layout: str) -> dict[str, list[float]]:
  """Steps/s of each timed window of one PROCESSESxDEVICES layout.

  Returns:
    {'loop': steps/s of the training loop's windows, 'step': steps/s of the
    train step alone on a fixed batch}.
  """
  processes, devices = (int(x) for x in layout.split('x'))
  port = _free_port()
  env = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    JAX_PLATFORMS='cpu',
  )
  root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  argv = [a for a in sys.argv[1:] if not a.startswith('--layouts')]
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'sgd_quad.benchmarks.scaling',
        *argv,
        f'--worker={processes}:{index}:{port}',
      ],
      env=env,
      cwd=root,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(processes)
  ]
  outputs = [p.communicate(timeout=1800) for p in procs]
  for proc, (_, err) in zip(procs, outputs, strict=True):
    if proc.returncode:
      raise RuntimeError(f'{layout} failed:\n{err[-3000:]}')
  line = [x for x in outputs[0][0].splitlines() if x.startswith('RESULT ')]
  return json.loads(line[0].removeprefix('RESULT '))


def main(argv):
  del argv
  if _WORKER.value:
    _worker(_WORKER.value)
    return
  from sgd_quad import data

  data.prepare_digits(_DATA_DIR.value)
  rates = {}
  for layout in _LAYOUTS.value:
    rates[layout] = measure(layout)
    print(
      f'{layout}: {statistics.median(rates[layout]["loop"]):.2f} steps/s',
      flush=True,
    )

  print(
    f'\n{_MODEL.value}, global batch {_BATCH.value}, {os.cpu_count()} CPU '
    f'cores; {_WINDOWS.value} windows of {_STEPS.value} steps; steps/s as '
    'median (min-max)\n'
  )
  print(f'{"layout":>6}  {"training loop":>22}  {"train step alone":>22}')
  for layout, r in rates.items():
    cells = [
      f'{statistics.median(v):7.2f} ({min(v):6.2f}-{max(v):6.2f})'
      for v in (r['loop'], r['step'])
    ]
    print(f'{layout:>6}  {cells[0]:>22}  {cells[1]:>22}')
  print()
  loop = {k: statistics.median(v['loop']) for k, v in rates.items()}
  step = {k: statistics.median(v['step']) for k, v in rates.items()}
  for a, b in (('1x4', '1x1'), ('2x2', '1x1'), ('2x2', '1x4')):
    if a in loop and b in loop:
      print(
        f'{a} / {b}: loop {loop[a] / loop[b]:.2f}, step alone '
        f'{step[a] / step[b]:.2f}'
      )
  for layout in loop:
    print(f'{layout}: loop / step alone {loop[layout] / step[layout]:.2f}')


if __name__ == '__main__':
  app.run(main)
