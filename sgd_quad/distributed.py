"""Starts JAX's distributed runtime for multi-process runs and checks it.

A multi-process run (a TPU pod, several GPU nodes, or several processes on one
machine) runs the same program in every process; `initialize` connects them
through `jax.distributed.initialize` before anything touches a device. With
explicit `coordinator_address`, `num_processes` and `process_id` it uses
those; without them it starts the runtime only where the environment says the
job has several processes (SLURM's `srun`, Open MPI, a Kubernetes indexed job,
a Cloud TPU VM, or `JAX_COORDINATOR_ADDRESS`), and JAX reads the rest from
that environment. A single process needs no runtime and none is started.

JAX's own client aborts the process (SIGABRT, a C++ stack trace) when the
coordinator cannot be reached or a process never joins. To fail with a clear
message instead, processes other than 0 first wait for the coordinator's port
to accept connections, and a watchdog ends any process whose start-up takes
longer than the timeout with one `error:` line and exit status 2.

Right after start-up `check_same_config` compares every process's config,
so that processes launched with different flags stop with the differing
field named instead of deadlocking in a collective later.
"""

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from sgd_quad import config_lib
from sgd_quad.errors import ConfigError

# Exit status of a process whose distributed start-up timed out; the same as
# the launcher's status for bad input.
STARTUP_EXIT_CODE = 2

# Extra time JAX's own connection timeout gets beyond ours, so that our
# watchdog (a readable message) always fires before JAX's abort.
_JAX_TIMEOUT_MARGIN_S = 30


class DistributedStartupError(RuntimeError):
  """The distributed runtime could not start (bad flags, no coordinator)."""


def cluster_environment() -> str | None:
  """Names the scheduler that launched this process as one of several.

  Only cheap environment checks: nothing is contacted.

  Returns:
    'JAX_COORDINATOR_ADDRESS', 'SLURM', 'Open MPI', 'Kubernetes' or
    'Cloud TPU' when the environment describes a multi-process job whose
    parameters JAX can detect itself; None otherwise.
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  # The variables JAX's SLURM detection reads; SLURM_STEP_NODELIST is only
  # set inside `srun`, not in the batch script itself.
  slurm = (
    'SLURM_JOB_ID',
    'SLURM_STEP_NODELIST',
    'SLURM_PROCID',
    'SLURM_LOCALID',
  )
  if all(v in env for v in slurm) and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in env and (
    int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
  ):
    return 'Open MPI'
  if 'KUBERNETES_SERVICE_HOST' in env and 'JOB_COMPLETION_INDEX' in env:
    return 'Kubernetes'
  if _on_cloud_tpu_vm():
    return 'Cloud TPU'
  return None


def _on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM: libtpu is installed and TPU chips are attached."""
  import importlib.util

  if importlib.util.find_spec('libtpu') is None:
    return False
  return any(
    os.path.exists(path) for path in ('/dev/accel0', '/dev/vfio/0')
  ) or bool(os.environ.get('TPU_WORKER_HOSTNAMES'))


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  timeout_s: float = 300.0,
  config: ml_collections.ConfigDict | None = None,
) -> bool:
  """Starts the distributed runtime when the job has several processes.

  Must run before anything initialises a JAX backend (`jax.devices()`, any
  computation). On CPU the processes' collectives go through gloo.

  Args:
    coordinator_address: 'host:port' of process 0, where it serves the
      coordination service; every process passes the same value. None:
      detect the job from the environment (`cluster_environment`).
    num_processes: processes in the job; required with `coordinator_address`.
    process_id: this process, in [0, num_processes); required with
      `coordinator_address`.
    timeout_s: how long to wait for the coordinator and for every process to
      join; past it the process prints one `error:` line and exits with
      status 2 (see the module docstring for why it cannot raise).
    config: if given, compared across processes once the runtime is up
      (`check_same_config`).

  Returns:
    True when the runtime was started, False for a single-process run.

  Raises:
    DistributedStartupError: for incomplete or inconsistent flags, or when
      process 0 cannot be reached within `timeout_s`.
    ConfigError: when processes were launched with different configs.
  """
  if jax.distributed.is_initialized():
    logging.info('The JAX distributed runtime is already running.')
  elif not _start(coordinator_address, num_processes, process_id, timeout_s):
    return False
  logging.info(
    'Process %d of %d, %d local and %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  if config is not None:
    check_same_config(config)
  return True


def _start(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  timeout_s: float,
) -> bool:
  """Starts the runtime if flags or environment ask for it; see `initialize`."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise DistributedStartupError(
        '--coordinator_address, --num_processes and --process_id go '
        'together: give all three, or none on a TPU pod, SLURM or Kubernetes'
      )
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedStartupError(
        f'--process_id={process_id} with --num_processes={num_processes}; '
        'allowed: 0 <= process_id < num_processes'
      )
    _split_address(coordinator_address)
    if num_processes == 1:
      return False
    source = f'coordinator {coordinator_address}'
  else:
    environment = cluster_environment()
    if environment is None:
      return False
    source = f'the {environment} environment'

  if os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION') is None:
    # gloo is JAX's default today; set so that CPU runs never end up
    # without cross-process collectives if that default changes.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # TODO(sgd_quad): the README's 2-process x 2-device digits run on a
    # loaded 2-core CPU once stopped for good after step 100, every
    # process blocked inside gloo's all-reduce in the train step (its
    # rerun finished; the tests' 20-step runs have never hung). Not seen
    # on accelerators; a watchdog on the step time would turn such a hang
    # into an error.
  deadline = time.monotonic() + timeout_s
  if coordinator_address is not None and process_id != 0:
    _wait_for_port(coordinator_address, deadline)
  _start_with_watchdog(
    source,
    deadline,
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=int(timeout_s) + _JAX_TIMEOUT_MARGIN_S,
  )
  return True


def _split_address(address: str) -> tuple[str, int]:
  """'host:port' or '[v6 address]:port' -> (host, port)."""
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit():
    raise DistributedStartupError(
      f'--coordinator_address={address!r}; allowed: host:port'
    )
  return host.strip('[]'), int(port)


def _wait_for_port(address: str, deadline: float):
  """Waits until the coordinator accepts TCP connections, or raises."""
  host, port = _split_address(address)
  last_error = None
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 5), 1)):
        return
    except OSError as e:
      last_error = e
    if time.monotonic() + 0.5 >= deadline:
      break
    time.sleep(0.5)
  raise DistributedStartupError(
    f'cannot reach the coordinator at {address} ({last_error}); process 0 '
    'must be running with the same --coordinator_address, reachable from '
    'this host'
  )


def _start_with_watchdog(source: str, deadline: float, **kwargs):
  """Calls `jax.distributed.initialize`, ending the process at `deadline`.

  JAX blocks in C++ while processes join, so a stuck start-up cannot be
  interrupted from Python; the watchdog thread prints the reason and exits.
  """
  done = threading.Event()

  def give_up():
    if done.wait(max(deadline - time.monotonic(), 0)):
      return
    print(
      f'error: the JAX distributed runtime did not start within the timeout '
      f'(waiting on {source} for all processes to join); start every '
      'process with the same --coordinator_address and --num_processes, and '
      'a distinct --process_id',
      file=sys.stderr,
      flush=True,
    )
    logging.flush()
    os._exit(STARTUP_EXIT_CODE)

  watchdog = threading.Thread(target=give_up, daemon=True)
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # JAX could not detect a parameter
    raise DistributedStartupError(
      f'cannot start the JAX distributed runtime from {source}: {e}; give '
      '--coordinator_address, --num_processes and --process_id'
    ) from e
  finally:
    done.set()


def _allgather_text(text: str) -> list[str]:
  """Every process's string, in process order (a collective)."""
  from jax.experimental import multihost_utils

  raw = np.frombuffer(text.encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.int32(len(raw)))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[: len(raw)] = raw
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [
    bytes(row[:size]).decode() for row, size in zip(rows, sizes, strict=True)
  ]


def _flatten(tree: Mapping, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def check_same_config(config: ml_collections.ConfigDict):
  """Checks that every process runs the same config (a collective).

  Every process must call it. Processes compare `config_lib.config_hash`;
  on a mismatch they exchange the configs themselves to name the field.

  Args:
    config: this process's run config.

  Raises:
    ConfigError: on every process, naming the first field that differs
      between process 0 and another process.
  """
  if jax.process_count() == 1:
    return
  hashes = _allgather_text(config_lib.config_hash(config))
  if len(set(hashes)) == 1:
    return
  texts = _allgather_text(json.dumps(config_lib.to_dict(config)))
  flat = [_flatten(json.loads(t)) for t in texts]
  for index, other in enumerate(flat[1:], start=1):
    fields = sorted(
      k for k in flat[0].keys() | other.keys() if flat[0].get(k) != other.get(k)
    )
    if fields:
      field = fields[0]
      raise ConfigError(
        field,
        f'differs between processes (process 0: {flat[0].get(field)!r}, '
        f'process {index}: {other.get(field)!r}; fields that differ: '
        f'{", ".join(fields)}); launch every process with the same config',
      )
  raise DistributedStartupError('config hashes differ between processes')
