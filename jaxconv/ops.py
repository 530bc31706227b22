"""The functional API: correlate, convolve, conv, conv_transpose, pooling; validation and dispatch.

Every public function validates its arguments here, in Python, on static shapes, before any
tracing reaches XLA, so bad input raises ``ValueError``/``TypeError`` naming the argument, also
under ``jax.jit``. Integer and bool inputs are promoted to the default float dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import kernels
from jaxconv.kernels import ConvSpec
from jaxconv.kernels.taps import swap_channels
from jaxconv.padding import Padding, Pair, check_fits, effective_kernel_size, normalize_ints, output_size, resolve_padding

DEFAULT_IMPL = "lax"


# --------------------------------------------------------------------------------------------
# validation


def as_float_array(name: str, value) -> jax.Array:
  """``value`` as a JAX array of a real floating dtype; ints and bools are promoted."""
  try:
    array = jnp.asarray(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be an array of numbers; got {type(value).__name__}: {e}") from None
  dtype = array.dtype
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise TypeError(f"{name} must be real; complex dtype {dtype} is not supported")
  if not jnp.issubdtype(dtype, jnp.floating):
    if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
      raise TypeError(f"{name} must have a numeric dtype; got {dtype}")
    array = array.astype(jnp.result_type(float))
  return array


def promote(**arrays) -> list[jax.Array]:
  """Arrays (by argument name) -> floating arrays of one common dtype; None passes through."""
  floats = {k: as_float_array(k, v) for k, v in arrays.items() if v is not None}
  dtype = jnp.result_type(*floats.values())
  return [None if v is None else floats[k].astype(dtype) for k, v in arrays.items()]


def check_rank(name: str, array: jax.Array, ranks: Sequence[int], what: str) -> None:
  """Raise ``ValueError`` unless ``array.ndim`` is one of ``ranks``."""
  if array.ndim not in ranks:
    raise ValueError(f"{name} must be {what} (ndim in {tuple(ranks)}); got shape {tuple(array.shape)}")


def check_groups(groups) -> int:
  """``groups`` as an int >= 1."""
  if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool):
    raise TypeError(f"groups must be an int; got {groups!r}")
  if groups < 1:
    raise ValueError(f"groups must be >= 1; got {groups}")
  return int(groups)


def check_kernel(x_shape: Sequence[int], w_shape: Sequence[int], groups: int) -> None:
  """Raise unless w ``(*kernel, C_in // groups, C_out)`` fits x ``(N, *spatial, C_in)`` and groups."""
  if len(w_shape) != len(x_shape):
    raise ValueError(f"w must have ndim {len(x_shape)} ((*kernel, C_in // groups, C_out) for x of shape {tuple(x_shape)}); got shape {tuple(w_shape)}")
  c_in, c_out = x_shape[-1], w_shape[-1]
  if c_in % groups:
    raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
  if c_out % groups:
    raise ValueError(f"groups={groups} must divide the output channels C_out={c_out} (w.shape[-1])")
  if w_shape[-2] * groups != c_in:
    raise ValueError(f"w: channel mismatch: x has C_in={c_in}, so w.shape[-2] must be C_in // groups = {c_in // groups}; got w of shape {tuple(w_shape)}")
  if any(k < 1 for k in w_shape[:-2]):
    raise ValueError(f"w must have at least one tap on every spatial axis; got shape {tuple(w_shape)}")


def check_bias(b: jax.Array | None, c_out: int) -> None:
  """Raise unless ``b`` is None or of shape ``(C_out,)``."""
  if b is not None and b.shape != (c_out,):
    raise ValueError(f"b must have shape (C_out,) = ({c_out},); got {tuple(b.shape)}")


def conv_spec(
    x: jax.Array,
    w: jax.Array,
    *,
    stride: int | Sequence[int],
    padding: Padding,
    dilation: int | Sequence[int],
    groups: int,
    convention: str = "lax",
) -> ConvSpec:
  """Validate a channels-last conv call and resolve its geometry to explicit form."""
  rank = len(x.shape) - 2
  groups = check_groups(groups)
  check_kernel(x.shape, w.shape, groups)
  spatial, kernel = x.shape[1:-1], w.shape[:rank]
  if any(k < 1 for k in kernel):
    raise ValueError(f"w must have at least one tap on every spatial axis; got shape {tuple(w.shape)}")
  strides = normalize_ints(stride, rank, "stride")
  dilations = normalize_ints(dilation, rank, "dilation")
  pads = resolve_padding(padding, spatial, kernel, strides, dilations, convention=convention)
  check_fits(spatial, kernel, pads, dilations)
  return ConvSpec.of(x, w, stride=strides, padding=pads, dilation=dilations, groups=groups)


def run_kernel(spec: ConvSpec, x: jax.Array, w: jax.Array, impl: str | None) -> jax.Array:
  """Dispatch a validated call to the kernel named ``impl`` (None: the default)."""
  kernel = kernels.get(DEFAULT_IMPL if impl is None else impl)
  reason = kernel.supports(spec)
  if reason is not None:
    raise ValueError(f"impl={kernel.name!r} does not support this call: {reason}")
  return kernel.fn(x, w, **spec.kwargs())


def add_bias(y: jax.Array, b: jax.Array | None) -> jax.Array:
  """``y + b`` over the channel axis; ``b`` of shape ``(C_out,)`` or None."""
  if b is None:
    return y
  # Added in the accumulation dtype so that b's gradient (a sum over N and space) is too.
  acc = kernels.accumulation_dtype(y.dtype)
  return (y.astype(acc) + b.astype(acc)).astype(y.dtype)


# --------------------------------------------------------------------------------------------
# signal-style: unbatched, single channel


def correlate(x, w, padding: Padding = "valid", stride=1, dilation=1, *, impl: str | None = None) -> jax.Array:
  """Cross-correlation of an unbatched single-channel signal; ``"same"`` etc. as in scipy.signal.

  x: ``(*spatial)``, w: ``(*kernel)`` of the same rank (1-3). At stride 1 and dilation 1 the
  mode strings give exactly ``scipy.signal.correlate(x, w, mode)``; a stride subsamples that.
  """
  x, w = promote(x=x, w=w)
  check_rank("x", x, (1, 2, 3), "a 1-3 D signal")
  if w.ndim != x.ndim:
    raise ValueError(f"w must have the same rank as x ({x.ndim}); got shape {tuple(w.shape)}")
  xb, wb = x[None, ..., None], w[..., None, None]
  spec = conv_spec(xb, wb, stride=stride, padding=padding, dilation=dilation, groups=1, convention="scipy")
  return run_kernel(spec, xb, wb, impl)[0, ..., 0]


def convolve(x, w, padding: Padding = "valid", stride=1, dilation=1, *, impl: str | None = None) -> jax.Array:
  """Convolution (the kernel flipped on every axis) of an unbatched signal, as scipy.signal.convolve."""
  x, w = promote(x=x, w=w)
  return correlate(x, jnp.flip(w), padding, stride, dilation, impl=impl)


# --------------------------------------------------------------------------------------------
# layer-style: batched, channels-last


def conv(
    x,
    w,
    b=None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: str | None = None,
) -> jax.Array:
  """Batched channels-last cross-correlation, padding strings as in ``lax.conv_general_dilated``.

  x: ``(N, *spatial, C_in)``, w: ``(*kernel, C_in // groups, C_out)``, b: ``(C_out,)`` or None
  -> ``(N, *out_spatial, C_out)``, 1-3 spatial axes.
  """
  x, w, b = promote(x=x, w=w, b=b)
  check_rank("x", x, (3, 4, 5), "(N, *spatial, C_in) with 1-3 spatial axes")
  spec = conv_spec(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
  check_bias(b, spec.out_channels)
  return add_bias(run_kernel(spec, x, w, impl), b)


def transpose_pads(padding: Padding, spatial: Sequence[int], extent: Sequence[int], strides: Sequence[int]) -> tuple[tuple[Pair, ...], tuple[int, ...]]:
  """conv_transpose geometry: the forward conv's pads and the transposed output spatial shape."""
  rank = len(spatial)
  if isinstance(padding, str) and padding.lower() == "same":
    out = tuple(n * s for n, s in zip(spatial, strides))
    pads = resolve_padding("same", out, extent, strides)
  else:
    # "valid"/"full"/explicit pads do not depend on the input size; extent is the dilated kernel.
    pads = resolve_padding(padding, (0,) * rank, extent, strides)
    out = tuple((n - 1) * s + k - lo - hi for n, k, s, (lo, hi) in zip(spatial, extent, strides, pads))
  if any(o < 1 for o in out):
    raise ValueError(f"padding={padding!r} leaves an empty conv_transpose output {out} for input spatial shape {tuple(spatial)}")
  return pads, out


def conv_transpose(
    x,
    w,
    b=None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: str | None = None,
) -> jax.Array:
  """The transpose (input gradient) of ``conv``: "deconvolution", upsampling by ``stride``.

  x: ``(N, *spatial, C_in)``, w: ``(*kernel, C_in // groups, C_out)`` (the same layout as for
  ``conv``), b: ``(C_out,)`` or None -> ``(N, *out_spatial, C_out)``. ``padding`` is the padding
  of the forward conv being transposed: ``out = (n - 1) * stride + d * (k - 1) + 1 - lo - hi``,
  and ``"same"`` gives ``out = n * stride``. This equals PyTorch's ``ConvTranspose`` with
  ``padding=lo=hi`` and ``lax.conv_transpose(..., transpose_kernel=True)`` with matching pads.
  """
  x, w, b = promote(x=x, w=w, b=b)
  check_rank("x", x, (3, 4, 5), "(N, *spatial, C_in) with 1-3 spatial axes")
  rank = x.ndim - 2
  groups = check_groups(groups)
  check_kernel(x.shape, w.shape, groups)
  c_out = w.shape[-1]
  check_bias(b, c_out)
  strides = normalize_ints(stride, rank, "stride")
  dilations = normalize_ints(dilation, rank, "dilation")
  kernel = w.shape[:rank]
  extent = tuple(effective_kernel_size(k, d) for k, d in zip(kernel, dilations))
  pads, out = transpose_pads(padding, x.shape[1:-1], extent, strides)
  # The forward conv being transposed maps C_out -> C_in.
  w_fwd = swap_channels(w, groups)
  z = jax.ShapeDtypeStruct((x.shape[0], *out, c_out), x.dtype)
  spec = conv_spec(z, w_fwd, stride=strides, padding=pads, dilation=dilations, groups=groups)
  _, pullback = jax.vjp(lambda z: run_kernel(spec, z, w_fwd, impl), jnp.zeros(z.shape, z.dtype))
  (y,) = pullback(x)
  return add_bias(y, b)


# --------------------------------------------------------------------------------------------
# pooling


def pool_geometry(x: jax.Array, window, stride, padding: Padding) -> tuple[tuple[int, ...], tuple[int, ...], tuple[Pair, ...]]:
  """Validate a pooling call on x ``(N, *spatial, C)``: window, strides, explicit pads."""
  check_rank("x", x, (3, 4, 5), "(N, *spatial, C) with 1-3 spatial axes")
  rank = x.ndim - 2
  windows = normalize_ints(window, rank, "window")
  strides = windows if stride is None else normalize_ints(stride, rank, "stride")
  pads = resolve_padding(padding, x.shape[1:-1], windows, strides)
  check_fits(x.shape[1:-1], windows, pads, (1,) * rank, name="window")
  # As in PyTorch: a pad as wide as the window would make windows that see only padding.
  if any(lo >= k or hi >= k for (lo, hi), k in zip(pads, windows)):
    raise ValueError(f"padding must be smaller than the window on each side; got pads {pads} for window {windows}")
  return windows, strides, pads


def window_axes(rank: int) -> tuple[int, ...]:
  """The window axes of blocks ``(N, o_1, k_1, ..., o_r, k_r, C)``."""
  return tuple(range(2, 2 * rank + 1, 2))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def block_max(blocks: jax.Array, rank: int) -> jax.Array:
  """Max over the windows of blocks ``(N, o_1, k_1, ..., o_r, k_r, C)`` -> ``(N, *o, C)``."""
  return jnp.max(blocks, axis=window_axes(rank))


@block_max.defjvp
def block_max_jvp(rank: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The first maximal element of each window (row-major) carries the tangent, as in lax and PyTorch."""
  (blocks,), (tangent,) = primals, tangents
  axes = window_axes(rank)
  y = jnp.max(blocks, axis=axes, keepdims=True)
  window = tuple(blocks.shape[a] for a in axes)
  order_shape = [1] * blocks.ndim
  for a, k in zip(axes, window):
    order_shape[a] = k
  order = np.arange(math.prod(window)).reshape(order_shape)
  first = jnp.min(jnp.where(blocks == y, order, order.size), axis=axes, keepdims=True)
  return jnp.squeeze(y, axes), jnp.sum(jnp.where(order == first, tangent, 0), axis=axes)


def reduce_windows(x: jax.Array, init: float, op, window, strides, pads) -> jax.Array:
  """Reduce every window of x ``(N, *spatial, C)`` with ``op``, padding with ``init``.

  Non-overlapping windows (stride == window) are reduced by a reshape, whose gradient is far
  cheaper on CPU than the ``select_and_scatter`` that ``lax.reduce_window`` lowers to.
  """
  rank = x.ndim - 2
  out = tuple(output_size(n, k, p, s) for n, k, p, s in zip(x.shape[1:-1], window, pads, strides))
  # A numpy scalar stays concrete under jit, so reduce_window sees a monoid (max/add with its
  # identity) and lowers to a differentiable primitive; a traced init is not differentiable.
  init = np.array(init, x.dtype)
  if tuple(strides) == tuple(window):
    xp = lax.pad(x, init, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    xp = xp[(slice(None), *(slice(0, o * k) for o, k in zip(out, window)))]
    split = [x.shape[0]]
    for o, k in zip(out, window):
      split += [o, k]
    xp = xp.reshape(*split, x.shape[-1])
    return block_max(xp, rank) if op is lax.max else jnp.sum(xp, axis=window_axes(rank))
  return lax.reduce_window(
      x, init, op, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
  )


def max_pool(x, window, stride=None, padding: Padding = "valid") -> jax.Array:
  """Max over each window of x ``(N, *spatial, C)``; pads count as -inf; stride defaults to window."""
  (x,) = promote(x=x)
  windows, strides, pads = pool_geometry(x, window, stride, padding)
  return reduce_windows(x, -jnp.inf, lax.max, windows, strides, pads)


def window_counts(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], pads: Sequence[Pair]) -> np.ndarray:
  """How many real (non-pad) input cells each pooling window covers, shape ``out_spatial``."""
  per_axis = []
  for n, k, s, (lo, hi) in zip(spatial, window, strides, pads):
    starts = np.arange(output_size(n, k, (lo, hi), s)) * s - lo
    per_axis.append(np.minimum(starts + k, n) - np.maximum(starts, 0))
  counts = per_axis[0]
  for c in per_axis[1:]:
    counts = np.multiply.outer(counts, c)
  return counts


def avg_pool(x, window, stride=None, padding: Padding = "valid", count_include_pad: bool = True) -> jax.Array:
  """Mean over each window of x ``(N, *spatial, C)``; pads count as zeros unless excluded."""
  (x,) = promote(x=x)
  windows, strides, pads = pool_geometry(x, window, stride, padding)
  acc = kernels.accumulation_dtype(x.dtype)
  sums = reduce_windows(x.astype(acc), 0.0, lax.add, windows, strides, pads)
  if count_include_pad:
    divisor = np.asarray(math.prod(windows), acc)
  else:
    divisor = window_counts(x.shape[1:-1], windows, strides, pads).astype(acc)[..., None]
  return (sums / divisor).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# introspection


def available_impls() -> tuple[str, ...]:
  """Names accepted by ``impl=`` (``None`` means ``"lax"``)."""
  return kernels.available()
