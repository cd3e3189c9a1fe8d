"""A lock that keeps two runs out of one workdir.

The lock is a small JSON file, `<workdir>/lock.json`, naming its holder (run
id, host, pid) and refreshed with a heartbeat at every log interval. It needs
neither POSIX file locks nor appends, so it works on object stores too. A
second run refuses to start while the holder is alive: on the same host that
means its pid still exists, elsewhere that its heartbeat is younger than
`stale_after_sec`. A lock left by a dead process is taken over with a warning.

Only process 0 of a multi-process run holds the lock; the trainer shares its
verdict with the other processes, so one run's processes are all admitted and
a second run's are all refused.
"""

import json
import os
import socket
import time
import uuid

from absl import logging
from etils import epath

LOCK_FILE = 'lock.json'


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Holds `<workdir>/lock.json` for the lifetime of a run.

  Attributes:
    path: the lock file.
    run_id: a random id of this run.
  """

  def __init__(self, workdir: str, *, stale_after_sec: float = 600.0):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.run_id = uuid.uuid4().hex
    self._stale_after_sec = stale_after_sec

  def _record(self) -> dict:
    return {
      'run_id': self.run_id,
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'heartbeat': time.time(),
    }

  def _holder_alive(self, holder: dict) -> bool:
    if holder.get('host') == socket.gethostname():
      return _pid_alive(int(holder.get('pid', -1)))
    age = time.time() - float(holder.get('heartbeat', 0))
    return age < self._stale_after_sec

  def acquire(self):
    """Takes the lock, or raises `WorkdirBusyError` naming the holder."""
    if self.path.exists():
      try:
        holder = json.loads(self.path.read_text())
      except (json.JSONDecodeError, OSError):
        holder = {}
      if holder and self._holder_alive(holder):
        raise WorkdirBusyError(
          f'workdir {self.path.parent} is in use by pid {holder.get("pid")} '
          f'on {holder.get("host")} (lock {self.path}); wait for it to end '
          'or use another --workdir'
        )
      if holder:
        logging.warning(
          'Taking over the lock of a dead run (pid %s on %s).',
          holder.get('pid'),
          holder.get('host'),
        )
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._write()
    # Two runs starting together both write; the later write wins and the
    # earlier writer sees a foreign run id here.
    if json.loads(self.path.read_text())['run_id'] != self.run_id:
      raise WorkdirBusyError(
        f'workdir {self.path.parent} was just taken by another run'
      )

  def _write(self):
    tmp = self.path.parent / f'.{LOCK_FILE}.{self.run_id}'
    tmp.write_text(json.dumps(self._record()))
    tmp.replace(self.path)

  def heartbeat(self):
    """Refreshes the lock's timestamp."""
    self._write()

  def release(self):
    """Removes the lock if this run still holds it."""
    try:
      holder = json.loads(self.path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
      return
    if holder.get('run_id') == self.run_id:
      self.path.unlink()
