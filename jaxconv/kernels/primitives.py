"""One transform mechanism for every kernel: three bilinear JAX primitives and their rules.

``conv_p(x, w)``, ``input_grad_p(dy, w)`` and ``kernel_grad_p(x, dy)`` carry the kernel's name and
its ``ConvGeometry`` as parameters and lower to the kernel's own functions (``registry``). Each
is bilinear, and each of its two partial transposes is one of the three, as for
``lax.conv_general_dilated``:

==================  ===============================  ===============================
primitive           transpose in its 1st operand     transpose in its 2nd operand
==================  ===============================  ===============================
y = F(x, w)         dx = Bx(dy, w)                   dw = Bw(x, dy)
dx = Bx(dy, w)      dy = F(dx, w)                    dw = Bw(dx, dy)
dw = Bw(x, dy)      dx = Bx(dy, dw)                  dy = F(x, dw)
==================  ===============================  ===============================

so ``ad.defbilinear`` gives forward mode (``F(dx, w) + F(x, dw)``) and reverse mode, and any
composition of them (``grad`` of any order, ``jacfwd``, ``jacrev``, ``hessian``) runs only the
kernel's fast functions, never a trace through its internals. Batching: an extra axis on the
per-example operand alone (x of F, dy of Bx) folds into the batch; anything else (a batch of
kernels, per-example kernel gradients) maps the primitive over that axis with ``lax.map``.

Sharding, for every kernel (``docs/sharding.md``). Under ``jax.jit`` with a batch-sharded x (or
dy), each device runs the kernel on its own rows: the outputs of ``F`` and ``Bx`` stay sharded
like the batch, and ``Bw`` is each shard's kernel gradient followed by one all-reduce (``psum``).

- Explicit mesh axes: the avals carry shardings. ``abstract_eval`` gives F and Bx the batch
  sharding of their first operand and Bw a replicated result; the lowering runs the kernel in a
  ``shard_map`` over the mesh. Any other explicit sharding (a spatially or channel-sharded
  activation, a sharded kernel) is not bound here: ``conv``, ``conv_input_grad`` and
  ``conv_kernel_grad`` answer it with lax's convolution, which XLA partitions itself.
- Auto axes: nothing is known at trace time, so the lowering wraps every kernel but lax (which
  XLA partitions natively) in ``custom_partitioning``: the partitioner, which knows the shardings,
  splits the batch over the mesh axes that shard the batch, and also over those that shard any
  other axis of the operands (their data is moved onto the batch, an all-to-all), so nothing is
  computed on the whole batch on every device; the kernel weights are gathered.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend import core
from jax.interpreters import ad, batching, mlir
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels import registry
from jaxconv.kernels.taps import input_grad_pads, transposed_kernel

Raw = Callable[[jax.Array, jax.Array, ConvGeometry], jax.Array]


def _forward(kernel: registry.Kernel) -> Raw:
  return kernel.forward


def _input_grad(kernel: registry.Kernel) -> Raw:
  """The kernel's input gradient, or the transpose JAX derives from its forward."""
  if kernel.input_grad is not None:
    return kernel.input_grad

  def derived(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
    x = jnp.zeros(g.x_shape, dy.dtype)
    return jax.vjp(lambda x: kernel.forward(x, w, g), x)[1](dy)[0]

  return derived


def _kernel_grad(kernel: registry.Kernel) -> Raw:
  """The kernel's kernel gradient, or the transpose JAX derives from its forward."""
  if kernel.kernel_grad is not None:
    return kernel.kernel_grad

  def derived(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
    w = jnp.zeros(g.w_shape, x.dtype)
    return jax.vjp(lambda w: kernel.forward(x, w, g), w)[1](dy)[0]

  return derived


Axes = tuple[str, ...]


# --------------------------------------------------------------------------------------------
# shardings


def _entry_axes(entry: object) -> Axes:
  """The mesh axes of one ``PartitionSpec`` entry (None, a name, or a tuple of names)."""
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (str(entry),)  # type: ignore[arg-type]


def _explicit_spec(aval: object) -> tuple[Axes, ...] | None:
  """Per dimension of ``aval``, the Explicit mesh axes that shard it; None when no dimension is."""
  sharding = getattr(aval, "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return None
  mesh = sharding.mesh
  explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == AxisType.Explicit}
  ndim = len(getattr(aval, "shape", ()))
  spec = (*sharding.spec, *(None,) * (ndim - len(sharding.spec)))
  axes = tuple(tuple(a for a in _entry_axes(entry) if a in explicit) for entry in spec)
  return axes if any(axes) else None


def explicit_layout(a: object, b: object, paired: bool) -> tuple[Axes, bool]:
  """The Explicit axes sharding ``a``'s batch, and whether that is all that is sharded.

  ``paired``: ``b`` is per-example too (dy of the kernel gradient) and must be sharded like
  ``a``'s batch; otherwise ``b`` (the kernel) must not be sharded at all.
  """
  sa, sb = _explicit_spec(a), _explicit_spec(b)
  batch = sa[0] if sa else ()
  a_native = sa is None or not any(sa[1:])
  if paired:
    b_native = (sb[0] if sb else ()) == batch and (sb is None or not any(sb[1:]))
  else:
    b_native = sb is None
  return batch, a_native and b_native


def _spec_entry(axes: Sequence[str]) -> str | tuple[str, ...] | None:
  """The ``PartitionSpec`` entry of a dimension sharded over ``axes``."""
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else tuple(axes)


def _multi_device(ctx: mlir.LoweringRuleContext) -> bool:
  """Whether the lowering is for an SPMD program over several devices (not inside a full shard_map)."""
  axis_context = ctx.module_context.axis_context
  mesh = getattr(axis_context, "mesh", None)
  manual = getattr(axis_context, "manual_axes", frozenset())
  if mesh is not None and set(manual) >= set(mesh.axis_names):
    return False
  devices = getattr(axis_context, "num_devices", None)
  if devices is None:
    devices = mesh.size if mesh is not None else 1
  return devices > 1


def _split_axes(mesh: object, specs: Sequence[object], batch: int) -> Axes:
  """Mesh axes to split a batch of ``batch`` over: those sharding the batch, then any other used axis that divides it.

  ``specs``: the operands' ``PartitionSpec``s, the per-example operand first.
  """
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))  # type: ignore[attr-defined]
  first = [a for a in _entry_axes(specs[0][0] if len(specs[0]) else None) if a in sizes]  # type: ignore[index,arg-type]
  others = [a for spec in specs for entry in spec for a in _entry_axes(entry) if a in sizes]  # type: ignore[attr-defined]
  axes: list[str] = []
  for axis in (*first, *others):
    if axis not in axes and batch % (math.prod(sizes[a] for a in axes) * sizes[axis]) == 0:
      axes.append(axis)
  return tuple(axes)


def _sharding_rule(g: ConvGeometry, name: str) -> str:
  """Shardy's rule for the custom call: only the batch factor ``n`` is shared between operands and result."""
  x = " ".join(["n", *(f"s{i}" for i in range(g.rank)), "c"])
  y = " ".join(["n", *(f"t{i}" for i in range(g.rank)), "o"])
  w = " ".join([*(f"k{i}" for i in range(g.rank)), "i", "p"])
  return {"conv": f"{x}, {w} -> {y}", "input_grad": f"{y}, {w} -> {x}", "kernel_grad": f"{x}, {y} -> {w}"}[name]


# --------------------------------------------------------------------------------------------
# the primitives


def _primitive(
  name: str,
  raw_of: Callable[[registry.Kernel], Raw],
  shape_of: Callable[[ConvGeometry], tuple[int, ...]],
  reduces: bool = False,
):
  """A primitive ``p(a, b; impl, geometry)`` lowered to ``raw_of(kernel)(a, b, geometry)``.

  ``shape_of`` gives the result shape; its batch axis (all but the kernel gradient's) is the
  operands' own, which batching or sharding may have changed. ``reduces``: the result sums over
  the batch (the kernel gradient), so a batch-sharded call is all-reduced and replicated.
  """
  prim = core.Primitive("jaxconv_conv" if name == "conv" else f"jaxconv_conv_{name}")

  def geometry_for(a: jax.Array | jax.core.ShapedArray, geometry: ConvGeometry) -> ConvGeometry:
    return geometry.with_batch(a.shape[0]) if a.shape[0] != geometry.batch else geometry

  def abstract_eval(a, b, *, impl: str, geometry: ConvGeometry):
    shape = shape_of(geometry_for(a, geometry))
    batch, native = explicit_layout(a, b, paired=reduces)
    if not native:
      raise ValueError(
        f"{prim.name} (impl={impl!r}) partitions only the batch under Explicit mesh axes; got operands "
        f"sharded as {a.sharding.spec} and {b.sharding.spec} (jaxconv.conv and conv_transpose run such calls on lax)"
      )
    if not batch:
      return jax.core.ShapedArray(shape, a.dtype)
    spec = PartitionSpec() if reduces else PartitionSpec(_spec_entry(batch))
    return jax.core.ShapedArray(shape, a.dtype, sharding=NamedSharding(a.sharding.mesh, spec))

  def lower(a: jax.Array, b: jax.Array, *, impl: str, geometry: ConvGeometry) -> jax.Array:
    g = geometry_for(a, geometry)
    # ``jaxconv.ops`` answers empty calls before binding, but batching can still empty one here:
    # vmap over a zero-size axis folds into a batch of 0 (kernels need at least one element).
    if g.empty:
      return jnp.zeros(shape_of(g), a.dtype)
    return raw_of(registry.get(impl))(a, b, g)

  def per_shard(axes: Axes, impl: str, geometry: ConvGeometry) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The kernel on one device's rows; the kernel gradient summed over the devices."""

    def run(a: jax.Array, b: jax.Array) -> jax.Array:
      y = lower(a, b, impl=impl, geometry=geometry)
      return lax.psum(y, axes) if reduces and axes else y

    return run

  def explicit(mesh, batch: Axes, impl: str, geometry: ConvGeometry):
    """Under Explicit axes: the kernel in a shard_map over the batch axes (the avals say which)."""
    rows = PartitionSpec(_spec_entry(batch))
    b_spec = rows if reduces else PartitionSpec()
    out = PartitionSpec() if reduces else rows
    # check_vma=False: the kernels' primitives carry no varying-axes types; the psum is explicit.
    return jax.shard_map(
      per_shard(batch, impl, geometry), mesh=mesh, in_specs=(rows, b_spec), out_specs=out, check_vma=False
    )

  def partitioned(impl: str, geometry: ConvGeometry):
    """Under Auto axes: the kernel as a custom_partitioning call that XLA's partitioner splits along the batch."""

    @custom_partitioning
    def call(a: jax.Array, b: jax.Array) -> jax.Array:
      # Inside a jit: custom_partitioning refuses a traced body with constants (numpy arrays that
      # kernels close over); jit keeps them in its own closed jaxpr.
      return jax.jit(functools.partial(lower, impl=impl, geometry=geometry))(a, b)

    def layout(mesh, arg_shapes) -> tuple[Axes, NamedSharding, NamedSharding, NamedSharding]:
      specs = [getattr(s.sharding, "spec", PartitionSpec()) for s in arg_shapes]
      axes = _split_axes(mesh, specs, arg_shapes[0].shape[0]) if mesh is not None and not mesh.empty else ()
      rows = NamedSharding(mesh, PartitionSpec(_spec_entry(axes)))
      whole = NamedSharding(mesh, PartitionSpec())
      return axes, rows, (rows if reduces else whole), (whole if reduces else rows)

    def partition(mesh, arg_shapes, result_shape):
      axes, rows, b_sharding, result = layout(mesh, arg_shapes)
      return mesh, per_shard(axes, impl, geometry), result, (rows, b_sharding)

    def infer(mesh, arg_shapes, result_shape):
      return layout(mesh, arg_shapes)[3]

    call.def_partition(
      partition, infer_sharding_from_operands=infer, sharding_rule=_sharding_rule(geometry, name)
    )
    return call

  def lowering(ctx: mlir.LoweringRuleContext, a, b, *, impl: str, geometry: ConvGeometry):
    a_aval, b_aval = ctx.avals_in
    batch, _ = explicit_layout(a_aval, b_aval, paired=reduces)
    if batch:
      fn = explicit(a_aval.sharding.mesh, batch, impl, geometry)
    elif impl != "lax" and _multi_device(ctx):
      # lax is left to XLA, which partitions its convolutions along any axis natively.
      fn = partitioned(impl, geometry)
    else:
      fn = functools.partial(lower, impl=impl, geometry=geometry)
    return mlir.lower_fun(fn, multiple_results=False)(ctx, a, b)

  @functools.lru_cache(maxsize=256)
  def compiled(impl: str, geometry: ConvGeometry):
    return jax.jit(functools.partial(prim.bind, impl=impl, geometry=geometry))

  prim.def_abstract_eval(abstract_eval)
  prim.def_impl(lambda a, b, *, impl, geometry: compiled(impl, geometry)(a, b))
  mlir.register_lowering(prim, lowering)
  return prim


def _x_shape(g: ConvGeometry) -> tuple[int, ...]:
  return g.x_shape


def _out_shape(g: ConvGeometry) -> tuple[int, ...]:
  return g.out_shape


def _w_shape(g: ConvGeometry) -> tuple[int, ...]:
  return g.w_shape


conv_p = _primitive("conv", _forward, _out_shape)
input_grad_p = _primitive("input_grad", _input_grad, _x_shape)
kernel_grad_p = _primitive("kernel_grad", _kernel_grad, _w_shape, reduces=True)


def _lower_with_devices(*prims: core.Primitive) -> None:
  """Have jit hand the device assignment to these primitives' lowering, as it does for custom_partitioning's.

  Under Auto axes the lowering emits a ``custom_partitioning`` call, whose lowering needs the
  devices; jit passes them only to primitives in this (private) set, so ours join it. Without it
  (a JAX that moved it), multi-device Auto programs fail to lower: ``tests/test_sharding.py`` says so.
  """
  try:
    from jax._src import dispatch
  except ImportError:  # pragma: no cover  (another JAX layout)
    return
  needs_devices = getattr(dispatch, "prim_requires_devices_during_lowering", None)
  if isinstance(needs_devices, set):
    needs_devices.update(prims)


_lower_with_devices(conv_p, input_grad_p, kernel_grad_p)


# Transposes (ad.defbilinear): ``ct`` is the result's cotangent; the operand being transposed
# is an undefined primal, the other one is known. They bind through the same entry points as a
# call does, so a cotangent sharded beyond the batch also gets lax's partitioned convolution.
def _conv_t_x(ct, x, w, *, impl, geometry):
  return _bind_input_grad(ct, w, geometry, impl)


def _conv_t_w(ct, x, w, *, impl, geometry):
  return _bind_kernel_grad(x, ct, geometry, impl)


def _input_grad_t_dy(ct, dy, w, *, impl, geometry):
  return _bind_conv(ct, w, geometry, impl)


def _input_grad_t_w(ct, dy, w, *, impl, geometry):
  return _bind_kernel_grad(ct, dy, geometry, impl)


def _kernel_grad_t_x(ct, x, dy, *, impl, geometry):
  return _bind_input_grad(dy, ct, geometry, impl)


def _kernel_grad_t_dy(ct, x, dy, *, impl, geometry):
  return _bind_conv(x, ct, geometry, impl)


ad.defbilinear(conv_p, _conv_t_x, _conv_t_w)
ad.defbilinear(input_grad_p, _input_grad_t_dy, _input_grad_t_w)
ad.defbilinear(kernel_grad_p, _kernel_grad_t_x, _kernel_grad_t_dy)


def _batcher(prim: core.Primitive, folds: bool):
  """vmap rule: fold an extra axis of the per-example first operand into its batch, else map."""

  def rule(args, dims, *, impl: str, geometry: ConvGeometry):
    (a, b), (da, db) = args, dims
    if folds and db is None:
      a = jnp.moveaxis(a, da, 0)
      size, n = a.shape[:2]
      y = prim.bind(a.reshape(size * n, *a.shape[2:]), b, impl=impl, geometry=geometry)
      return y.reshape(size, n, *y.shape[1:]), 0
    # An unbatched operand is closed over, not broadcast: a batch of kernels would otherwise
    # hold one copy of x per kernel.
    bind = functools.partial(prim.bind, impl=impl, geometry=geometry)
    if da is None:
      return lax.map(lambda b: bind(a, b), jnp.moveaxis(b, db, 0)), 0
    if db is None:
      return lax.map(lambda a: bind(a, b), jnp.moveaxis(a, da, 0)), 0
    return lax.map(lambda ab: bind(*ab), (jnp.moveaxis(a, da, 0), jnp.moveaxis(b, db, 0))), 0

  return rule


batching.primitive_batchers[conv_p] = _batcher(conv_p, folds=True)
batching.primitive_batchers[input_grad_p] = _batcher(input_grad_p, folds=True)
batching.primitive_batchers[kernel_grad_p] = _batcher(kernel_grad_p, folds=False)


# --------------------------------------------------------------------------------------------
# entry points: the kernel's primitive, or lax's convolution for a sharding beyond the batch


def _native(a: jax.Array, b: jax.Array, paired: bool) -> bool:
  """Whether the operands' Explicit shardings (if any) are the batch alone, which every kernel partitions."""
  return explicit_layout(jax.typeof(a), jax.typeof(b), paired)[1]


def _lax_conv(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """``F`` as one ``lax.conv_general_dilated``, which XLA partitions along any axis."""
  return registry.get("lax").forward(x, w, g)


def _lax_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """``Bx`` as one ``lax.conv_general_dilated``: dy dilated by the stride, correlated with the flipped kernel."""
  from jaxconv.kernels.lax import dimension_numbers  # the lax kernel module registers itself on import

  pads = input_grad_pads(g.spatial, g.kernel, g.stride, g.padding, g.dilation, g.out_spatial)[1:-1]
  dx = lax.conv_general_dilated(
    dy,
    transposed_kernel(w, g.groups),
    (1,) * g.rank,
    [(lo, hi) for lo, hi, _ in pads],
    lhs_dilation=g.stride,
    rhs_dilation=g.dilation,
    dimension_numbers=dimension_numbers(g.rank),
    feature_group_count=g.groups,
    preferred_element_type=registry.accumulation_dtype(dy.dtype),
  )
  return dx.astype(dy.dtype)


def _lax_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """``Bw`` as JAX's own transpose of ``_lax_conv`` in w (replicated w)."""
  w = jnp.zeros(g.w_shape, x.dtype)
  return jax.vjp(lambda w: _lax_conv(x, w, g), w)[1](dy)[0]


def _bind_conv(x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  if not _native(x, w, paired=False):
    return _lax_conv(x, w, g)
  return conv_p.bind(x, w, impl=impl, geometry=g)


def _bind_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  if not _native(dy, w, paired=False):
    return _lax_input_grad(dy, w, g)
  return input_grad_p.bind(dy, w, impl=impl, geometry=g)


def _bind_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  if not _native(x, dy, paired=True):
    return _lax_kernel_grad(x, dy, g)
  return kernel_grad_p.bind(x, dy, impl=impl, geometry=g)


def conv(x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``y = F(x, w)`` by the kernel ``impl`` (aliases such as ``"auto"`` resolved for ``g``).

  x ``(N, *spatial, C_in)`` sharded (under Explicit mesh axes) on anything but the batch alone,
  or w sharded at all, runs on lax's convolution instead, which XLA partitions (``docs/sharding.md``).
  """
  return _bind_conv(x, w, g, registry.resolve(impl, g).name)


def conv_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``dx = Bx(dy, w)``: the transpose of ``conv`` in x (a transposed convolution); shardings as ``conv``."""
  return _bind_input_grad(dy, w, g, registry.resolve(impl, g).name)


def conv_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``dw = Bw(x, dy)``: the transpose of ``conv`` in w; x and dy sharded alike on the batch, or lax's."""
  return _bind_kernel_grad(x, dy, g, registry.resolve(impl, g).name)


__all__ = [
  "conv",
  "conv_input_grad",
  "conv_kernel_grad",
  "conv_p",
  "explicit_layout",
  "input_grad_p",
  "kernel_grad_p",
]
