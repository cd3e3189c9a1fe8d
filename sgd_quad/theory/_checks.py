"""Argument checks shared by the theory modules.

Each check raises `ValueError` whose message names the argument and the
allowed range. Values that are JAX tracers (a caller jitting a closed form)
cannot be inspected and pass unchecked.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value: Any) -> np.ndarray | None:
  """`value` as a numpy array, or None when it is traced."""
  try:
    return np.asarray(value, dtype=np.float64)
  except jax.errors.TracerArrayConversionError:
    return None


def _show(array: np.ndarray) -> str:
  if array.size == 1:
    return repr(float(array.reshape(())))
  return f'values in [{array.min():g}, {array.max():g}]'


def in_range(
  name: str,
  value: Any,
  low: float = -np.inf,
  high: float = np.inf,
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Raises ValueError unless every entry of `value` lies in the interval.

  Args:
    name: argument name, quoted in the message.
    value: a number or array.
    low: lower bound; excluded if `low_open`.
    high: upper bound; excluded if `high_open`.
    low_open: whether the lower bound is excluded.
    high_open: whether the upper bound is excluded.
  """
  array = _concrete(value)
  if array is None:
    return
  ok = np.isfinite(array) | np.isinf(high) & (array == np.inf)
  ok &= array > low if low_open else array >= low
  ok &= array < high if high_open else array <= high
  if not np.all(ok):
    interval = (
      f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    )
    raise ValueError(f'{name} must be in {interval}, got {_show(array)}')


def positive(name: str, value: Any) -> None:
  """Raises ValueError unless every entry of `value` is finite and > 0."""
  in_range(name, value, 0.0, np.inf, low_open=True, high_open=True)


def integer(name: str, value: Any, minimum: int) -> int:
  """Returns `value` as an int; raises ValueError unless it is >= minimum."""
  if isinstance(value, bool) or int(value) != value or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
  return int(value)


def stable_lr(lr: Any, h: Any, momentum: Any) -> None:
  """Raises ValueError unless SGD at `lr` is stable on every curvature `h`.

  Heavy-ball SGD is stable iff 0 < lr h < 2 (1 + momentum); the arguments
  broadcast against each other.
  """
  lrs, hs, mu = _concrete(lr), _concrete(h), _concrete(momentum)
  if lrs is None or hs is None or mu is None:
    return
  ratio = lrs * hs / (2.0 * (1.0 + mu))
  if np.any(ratio >= 1.0):
    raise ValueError(
      'lr must satisfy lr * h < 2 (1 + momentum) for a stationary state, '
      f'got lr * h / (2 (1 + momentum)) up to {ratio.max():g}'
    )


def namespace(*values: Any):
  """jax.numpy if any value is a JAX array (or tracer), else numpy.

  Closed forms evaluated on plain numbers then run in float64 NumPy, with
  no compilation; on JAX inputs, and under jit, they stay in JAX.
  """
  if any(isinstance(v, jax.Array) for v in values):
    return jnp
  return np
