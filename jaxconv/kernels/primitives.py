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

The bias. ``conv_bias_p(x, w, b) = F(x, w) + b`` and ``kernel_bias_grad_p(x, dy) = (Bw(x, dy),
sum(dy))`` serve kernels that add a bias and give its gradient in the same call
(``forward_bias``, ``kernel_grad_bias``: oneDNN). ``conv_bias_p`` is linear in x alone and in
(w, b) together, so its tangent is ``F(dx, w) + conv_bias_p(x, dw, db)`` and the transpose of the
second term is one ``kernel_bias_grad_p`` call; ``kernel_bias_grad_p`` is linear in dy (its
transpose is ``conv_bias_p`` again) and in x (``Bx(dy, ct_dw)``). They are bound only where
nothing is sharded Explicitly; on several devices they lower to the three primitives above plus
XLA's add and reduction, which partition as those do. Kernels without the fused functions get
the same add and reduction, unchanged.

Sharding, for every kernel (``docs/sharding.md``). Under ``jax.jit`` with a batch-sharded x (or
dy), each device runs the kernel on its own rows: the outputs of ``F`` and ``Bx`` stay sharded
like the batch, and ``Bw`` is each shard's kernel gradient followed by one all-reduce (``psum``).
A kernel split over C_out (groups == 1) is partitioned too (model parallelism; the table below).

- Explicit mesh axes: the avals carry shardings. ``abstract_eval`` gives each result its
  sharding (the table below); the lowering runs the kernel in a ``shard_map`` over the mesh.
  Any other explicit sharding (a spatially or C_in-split activation, a kernel split on another
  axis) is not bound here: ``conv``, ``conv_input_grad`` and ``conv_kernel_grad`` answer it with
  lax's convolution, which XLA partitions itself.
- Auto axes: nothing is known at trace time, so on several devices the lowering wraps the kernel
  (all but lax's ungrouped convolutions, which XLA partitions natively) in
  ``custom_partitioning``: the partitioner, which knows the shardings, asks ``auto_layout`` for
  the split (the batch's axes, C_out's, and any other axis that splits an operand moved onto the
  batch, with a warning), so nothing is computed on the whole batch on every device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
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
Specs = tuple[Axes, ...]  # per dimension, the mesh axes that split it


# --------------------------------------------------------------------------------------------
# shardings: which mesh axes split the batch (B) and the output channels (M)
#
#   primitive      a                  b                   result              summed over
#   conv           x  (B, ..., -)     w  (..., -, M)      y  (B, ..., M)      -
#   input_grad     dy (B, ..., M)     w  (..., -, M)      dx (B, ..., -)      M
#   kernel_grad    x  (B, ..., -)     dy (B, ..., M)      dw (..., -, M)      B
#
# M only with groups == 1 (a channel split of a grouped conv would cut across its groups).


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a call is split: mesh axes over the batch and over C_out; ``native`` when the operands are laid out so."""

  batch: Axes = ()
  channels: Axes = ()
  native: bool = True


def _entry_axes(entry: object) -> Axes:
  """The mesh axes of one ``PartitionSpec`` entry (None, a name, or a tuple of names)."""
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (str(entry),)


def _spec_axes(spec: PartitionSpec | Sequence[object], ndim: int, allowed: Callable[[str], bool]) -> Specs:
  """A ``PartitionSpec`` as per-dimension axes (padded to ``ndim``), keeping the ``allowed`` axes."""
  given: tuple[object, ...] = tuple(spec)  # a PartitionSpec iterates over its entries
  entries = (*given, *(None,) * (ndim - len(given)))
  return tuple(tuple(a for a in _entry_axes(entry) if allowed(a)) for entry in entries)


def _explicit_specs(aval: object) -> Specs:
  """Per dimension of ``aval``, the Explicit mesh axes that split it (all empty without any)."""
  ndim = len(getattr(aval, "shape", ()))
  sharding = getattr(aval, "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return ((),) * ndim
  mesh = sharding.mesh
  explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == AxisType.Explicit}
  return _spec_axes(sharding.spec, ndim, explicit.__contains__)


def _operand_specs(name: str, ranks: tuple[int, int], layout: Layout) -> tuple[Specs, Specs]:
  """The specs of the operands ``(a, b)`` of primitive ``name`` split as ``layout`` says (see the table above)."""
  batch, channels = layout.batch, layout.channels
  a = (batch, *((),) * (ranks[0] - 2), channels if name == "input_grad" else ())
  b = (batch if name == "kernel_grad" else (), *((),) * (ranks[1] - 2), channels)
  return a, b


def _result_specs(name: str, ndim: int, layout: Layout) -> Specs:
  """The spec of the result of primitive ``name`` split as ``layout`` says."""
  if name == "kernel_grad":
    return (*((),) * (ndim - 1), layout.channels)
  return (layout.batch, *((),) * (ndim - 2), layout.channels if name == "conv" else ())


def _summed_axes(name: str, layout: Layout) -> Axes:
  """The mesh axes a per-shard result is summed over: C_out's for dx, the batch's for dw."""
  return {"conv": (), "input_grad": layout.channels, "kernel_grad": layout.batch}[name]


def explicit_layout(name: str, a: object, b: object, groups: int) -> Layout:
  """The layout of a call of primitive ``name`` whose operand avals ``a``, ``b`` carry Explicit shardings.

  Args:
    name: ``"conv"``, ``"input_grad"`` or ``"kernel_grad"`` (a row of the table above).
    a: the per-example operand's aval (x ``(N, *spatial, C_in)``, or dy for the input gradient).
    b: the other operand's aval (w ``(*kernel, C_in // groups, C_out)``, or dy for the kernel gradient).
    groups: the convolution's feature groups.

  Returns:
    The batch's and C_out's Explicit axes; ``Layout()`` when nothing is split. ``native`` is False
    for any other split (a spatially or C_in-split activation, a kernel split on another axis, C_out
    split with groups), which the entry points answer with lax's convolution.
  """
  sa, sb = _explicit_specs(a), _explicit_specs(b)
  if not any(sa) and not any(sb):
    return Layout()
  layout = Layout(sa[0], sb[-1])
  native = (sa, sb) == _operand_specs(name, (len(sa), len(sb)), layout)
  native = native and not (layout.channels and groups > 1) and not set(layout.batch) & set(layout.channels)
  return dataclasses.replace(layout, native=native)


def _spec(axes: Specs) -> PartitionSpec:
  """Per-dimension axes as a ``PartitionSpec``."""
  return PartitionSpec(*(None if not a else a[0] if len(a) == 1 else tuple(a) for a in axes))


def _multi_device(ctx: mlir.LoweringRuleContext) -> bool:
  """Whether the lowering is for an SPMD program over several devices (not inside a full shard_map)."""
  axis_context = ctx.module_context.axis_context
  mesh = getattr(axis_context, "mesh", None)
  manual: frozenset[str] = getattr(axis_context, "manual_axes", frozenset())
  if mesh is not None and set(manual) >= set(mesh.axis_names):
    return False
  devices = getattr(axis_context, "num_devices", None)
  if devices is None:
    devices = mesh.size if mesh is not None else 1
  return devices > 1


def auto_layout(
  mesh: object, specs: Sequence[PartitionSpec | Sequence[object]], ndims: Sequence[int], g: ConvGeometry
) -> Layout:
  """The split chosen for a call under Auto axes, from its operands' shardings.

  The batch keeps the axes that split it; C_out keeps those that split the kernel's (or dy's)
  last axis, with groups == 1 when they divide it; every other axis that splits an operand is
  moved onto the batch where it divides it, so that no device computes the whole batch when the
  operands were split some other way. The rest is gathered.

  Args:
    mesh: the partitioner's mesh (``axis_names``, ``axis_sizes``).
    specs: the ``PartitionSpec``s of the operands ``(a, b)`` (a row of the table above).
    ndims: their numbers of dimensions.
    g: the call's geometry, with the batch of ``a``.

  Returns:
    The mesh axes over the batch and over C_out (``native`` True: the operands are resharded to it).
  """
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))  # type: ignore[attr-defined]
  a = _spec_axes(specs[0], ndims[0], sizes.__contains__)
  b = _spec_axes(specs[1], ndims[1], sizes.__contains__)
  rows = g.batch
  batch = list(dict.fromkeys(a[0]))
  channels: list[str] = []
  for axis in b[-1] if g.groups == 1 else ():
    if axis not in batch and g.out_channels % (math.prod(sizes[c] for c in channels) * sizes[axis]) == 0:
      channels.append(axis)
  for axis in (axis for dim in (*a, *b) for axis in dim):
    if axis not in batch and axis not in channels and rows % (math.prod(sizes[c] for c in batch) * sizes[axis]) == 0:
      batch.append(axis)
  return Layout(tuple(batch), tuple(channels))


def _warn_moved(op: str, impl: str, given: object, chosen: NamedSharding) -> None:
  """Warn (at compile time) when an activation split along a spatial or C_in axis is moved onto the batch."""
  spec = getattr(getattr(given, "sharding", None), "spec", None)
  ndim = len(getattr(given, "shape", ()))
  if spec is None or not ndim:
    return
  wanted = _spec_axes(chosen.spec, ndim, lambda _: True)
  moved = [axes for axes, want in zip(_spec_axes(spec, ndim, lambda _: True)[1:], wanted[1:]) if set(axes) - set(want)]
  if moved:
    warnings.warn(
      f"jaxconv: {op} with impl={impl!r} under Auto mesh axes got an activation split as {spec} (beyond the batch); "
      "its kernel partitions the batch (and C_out), so the split is moved onto the batch (an all-to-all) and the "
      "gradients may run unsplit. Split the batch instead, use Explicit axes (jaxconv then runs lax), or impl='lax', "
      "which XLA partitions along any axis (docs/sharding.md).",
      stacklevel=2,
    )


def _sharding_rule(g: ConvGeometry, name: str) -> str:
  """Shardy's rule for the custom call: the batch ``n`` and C_out ``o`` factors shared as in the table above."""
  x = " ".join(["n", *(f"s{i}" for i in range(g.rank)), "c"])
  y = " ".join(["n", *(f"t{i}" for i in range(g.rank)), "o"])
  w = " ".join([*(f"k{i}" for i in range(g.rank)), "i", "o"])
  return {"conv": f"{x}, {w} -> {y}", "input_grad": f"{y}, {w} -> {x}", "kernel_grad": f"{x}, {y} -> {w}"}[name]


def _local(geometry: ConvGeometry, channels: Axes, sizes: dict[str, int]) -> ConvGeometry:
  """``geometry`` with C_out split over ``channels`` (the batch follows the operands)."""
  split = math.prod(sizes[a] for a in channels)
  return geometry if split == 1 else dataclasses.replace(geometry, out_channels=geometry.out_channels // split)


# --------------------------------------------------------------------------------------------
# the primitives


def _geometry_for(a: jax.Array | jax.core.ShapedArray, geometry: ConvGeometry) -> ConvGeometry:
  """``geometry`` with the batch of ``a``, which batching or sharding may have changed."""
  return geometry.with_batch(a.shape[0]) if a.shape[0] != geometry.batch else geometry


def _primitive(
  name: str, raw_of: Callable[[registry.Kernel], Raw], shape_of: Callable[[ConvGeometry], tuple[int, ...]]
):
  """A primitive ``p(a, b; impl, geometry)`` lowered to ``raw_of(kernel)(a, b, geometry)``.

  ``name``: "conv", "input_grad" or "kernel_grad" (its row in the sharding table above).
  ``shape_of`` gives the result shape; its batch axis (all but the kernel gradient's) is the
  operands' own, which batching or sharding may have changed.
  """
  prim = core.Primitive("jaxconv_conv" if name == "conv" else f"jaxconv_conv_{name}")

  def abstract_eval(a, b, *, impl: str, geometry: ConvGeometry):
    shape = shape_of(_geometry_for(a, geometry))
    layout = explicit_layout(name, a, b, geometry.groups)
    if not layout.native:
      raise ValueError(
        f"{prim.name} (impl={impl!r}) partitions the batch and C_out under Explicit mesh axes; got operands "
        f"sharded as {a.sharding.spec} and {b.sharding.spec} (jaxconv.conv and conv_transpose run such calls on lax)"
      )
    if layout == Layout():
      return jax.core.ShapedArray(shape, a.dtype)
    spec = _spec(_result_specs(name, len(shape), layout))
    return jax.core.ShapedArray(shape, a.dtype, sharding=NamedSharding(a.sharding.mesh, spec))

  def lower(a: jax.Array, b: jax.Array, *, impl: str, geometry: ConvGeometry) -> jax.Array:
    g = _geometry_for(a, geometry)
    # ``jaxconv.ops`` answers empty calls before binding, but batching can still empty one here:
    # vmap over a zero-size axis folds into a batch of 0 (kernels need at least one element).
    if g.empty:
      return jnp.zeros(shape_of(g), a.dtype)
    return raw_of(registry.get(impl))(a, b, g)

  def per_shard(layout: Layout, sizes: dict[str, int], impl: str, geometry: ConvGeometry):
    """The kernel on one device's block; partial sums (dx over C_out, dw over the batch) all-reduced."""
    local = _local(geometry, layout.channels, sizes)
    summed = _summed_axes(name, layout)

    def run(a: jax.Array, b: jax.Array) -> jax.Array:
      y = lower(a, b, impl=impl, geometry=local)
      return lax.psum(y, summed) if summed else y

    return run

  def specs(layout: Layout, ranks: tuple[int, int], ndim: int) -> tuple[tuple[PartitionSpec, ...], PartitionSpec]:
    a, b = _operand_specs(name, ranks, layout)
    return (_spec(a), _spec(b)), _spec(_result_specs(name, ndim, layout))

  def explicit(mesh, layout: Layout, ranks: tuple[int, int], ndim: int, impl: str, geometry: ConvGeometry):
    """Under Explicit axes: the kernel in a shard_map over the mesh (the avals say how it is split)."""
    in_specs, out_specs = specs(layout, ranks, ndim)
    # check_vma=False: the kernels' primitives carry no varying-axes types; the psum is explicit.
    return jax.shard_map(
      per_shard(layout, dict(mesh.shape), impl, geometry),
      mesh=mesh,
      in_specs=in_specs,
      out_specs=out_specs,
      check_vma=False,
    )

  def partitioned(impl: str, geometry: ConvGeometry):
    """Under Auto axes: the kernel as a custom_partitioning call that XLA's partitioner splits (``auto_layout``)."""

    @custom_partitioning
    def call(a: jax.Array, b: jax.Array) -> jax.Array:
      # Inside a jit: custom_partitioning refuses a traced body with constants (numpy arrays that
      # kernels close over); jit keeps them in its own closed jaxpr.
      return jax.jit(functools.partial(lower, impl=impl, geometry=geometry))(a, b)

    def layout_of(mesh, arg_shapes, result_shape):
      operand_specs = tuple(getattr(s.sharding, "spec", PartitionSpec()) for s in arg_shapes)
      ranks = (len(arg_shapes[0].shape), len(arg_shapes[1].shape))
      g = geometry.with_batch(arg_shapes[0].shape[0])  # vmap may have folded a batch into it
      layout = auto_layout(mesh, operand_specs, ranks, g) if not mesh.empty else Layout()
      in_specs, out_spec = specs(layout, ranks, len(result_shape.shape))
      return layout, tuple(NamedSharding(mesh, s) for s in in_specs), NamedSharding(mesh, out_spec)

    def partition(mesh, arg_shapes, result_shape):
      layout, in_shardings, out_sharding = layout_of(mesh, arg_shapes, result_shape)
      _warn_moved(prim.name, impl, arg_shapes[0], in_shardings[0])
      return mesh, per_shard(layout, dict(mesh.shape), impl, geometry), out_sharding, in_shardings

    def infer(mesh, arg_shapes, result_shape):
      return layout_of(mesh, arg_shapes, result_shape)[2]

    call.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=_sharding_rule(geometry, name))
    return call

  def lowering(ctx: mlir.LoweringRuleContext, a, b, *, impl: str, geometry: ConvGeometry):
    a_aval, b_aval = ctx.avals_in
    assert isinstance(a_aval, jax.core.ShapedArray) and isinstance(b_aval, jax.core.ShapedArray)
    layout = explicit_layout(name, a_aval, b_aval, geometry.groups)
    if layout != Layout():
      ranks = (len(a_aval.shape), len(b_aval.shape))
      fn = explicit(a_aval.sharding.mesh, layout, ranks, len(ctx.avals_out[0].shape), impl, geometry)
    elif (impl != "lax" or geometry.groups > 1) and _multi_device(ctx):
      # lax is left to XLA, which partitions its convolutions along any axis natively, but for
      # grouped ones: XLA all-gathers the batch around their kernel gradient (a batch-grouped conv).
      fn = partitioned(impl, geometry)
    else:
      fn = functools.partial(lower, impl=impl, geometry=geometry)
    return mlir.lower_fun(fn, multiple_results=False)(ctx, a, b)

  @functools.lru_cache(maxsize=256)
  def compiled(impl: str, geometry: ConvGeometry):
    return jax.jit(functools.partial(prim.bind, impl=impl, geometry=geometry))

  registry.add_replace_hook(compiled.cache_clear)  # a replaced kernel must not run from here
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
kernel_grad_p = _primitive("kernel_grad", _kernel_grad, _w_shape)


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


def _map_over(fn: Callable, args: Sequence[jax.Array], dims: Sequence[int | None]):
  """``lax.map`` of ``fn`` over the batched ``args`` (moved to axis 0), the others closed over (not broadcast)."""
  batched = [i for i, d in enumerate(dims) if d is not None]

  def one(mapped):
    full = list(args)
    for i, value in zip(batched, mapped):
      full[i] = value
    return fn(*full)

  return lax.map(one, tuple(jnp.moveaxis(args[i], dims[i], 0) for i in batched))  # type: ignore[arg-type]  # batched


def _batcher(prim: core.Primitive, folds: bool):
  """vmap rule: fold an extra axis of the per-example first operand into its batch, else map."""

  def rule(args, dims, *, impl: str, geometry: ConvGeometry):
    (a, b), (da, db) = args, dims
    if folds and db is None:
      # The mapped axis goes after the batch, (N, V, ...) -> (N * V, ...): a batch split over
      # devices then stays one contiguous block per device (before the batch, it would not).
      a = jnp.moveaxis(a, da, 1)
      n, size = a.shape[:2]
      y = _bind(prim, a.reshape(n * size, *a.shape[2:]), b, impl, geometry)
      return y.reshape(n, size, *y.shape[1:]), 1
    # An unbatched operand is closed over, not broadcast: a batch of kernels would otherwise
    # hold one copy of x per kernel.
    return _map_over(functools.partial(_bind, prim, impl=impl, geometry=geometry), args, dims), 0

  return rule


batching.primitive_batchers[conv_p] = _batcher(conv_p, folds=True)
batching.primitive_batchers[input_grad_p] = _batcher(input_grad_p, folds=True)
batching.primitive_batchers[kernel_grad_p] = _batcher(kernel_grad_p, folds=False)


# --------------------------------------------------------------------------------------------
# entry points: the kernel's primitive, or lax's convolution for a sharding beyond the batch


def _native(name: str, a: jax.Array, b: jax.Array, g: ConvGeometry) -> bool:
  """Whether the operands' Explicit shardings (if any) are ones every kernel partitions (batch, C_out)."""
  return explicit_layout(name, jax.typeof(a), jax.typeof(b), g.groups).native


def _lax_out_sharding(a: jax.Array, b: jax.Array, keep_channels: bool) -> NamedSharding | None:
  """The sharding lax's convolution is asked for on a fallback: a's batch and spatial axes, b's C_out axes.

  lax infers one itself only for a replicated kernel and unsplit input channels; otherwise it
  needs ``out_sharding``. Axes already used by a are not reused for C_out; a's C_in split is summed away.
  """
  sa, sb = _explicit_specs(jax.typeof(a)), _explicit_specs(jax.typeof(b))
  if not any(sa) and not any(sb):
    return None
  used = {axis for dim in sa[:-1] for axis in dim}
  channels = tuple(axis for axis in sb[-1] if axis not in used) if keep_channels else ()
  mesh = jax.typeof(a if any(sa) else b).sharding.mesh
  return NamedSharding(mesh, _spec((*sa[:-1], channels)))


def _lax_conv(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """``F`` as one ``lax.conv_general_dilated``, which XLA partitions along any axis."""
  from jaxconv.kernels.lax import lax_conv  # the lax kernel module registers itself on import

  return lax_conv(x, w, g, out_sharding=_lax_out_sharding(x, w, keep_channels=True))


def _lax_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """``Bx`` as one ``lax.conv_general_dilated``: dy dilated by the stride, correlated with the flipped kernel."""
  from jaxconv.kernels.lax import dimension_numbers

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
    out_sharding=_lax_out_sharding(dy, w, keep_channels=False),
  )
  return dx.astype(dy.dtype)


def _lax_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """``Bw`` as JAX's own transpose of ``_lax_conv`` in w (replicated w)."""
  w = jnp.zeros(g.w_shape, x.dtype)
  return jax.vjp(lambda w: _lax_conv(x, w, g), w)[1](dy)[0]


def _bind_conv(x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  if not _native("conv", x, w, g):
    return _lax_conv(x, w, g)
  return conv_p.bind(x, w, impl=impl, geometry=g)


def _bind_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  if not _native("input_grad", dy, w, g):
    return _lax_input_grad(dy, w, g)
  return input_grad_p.bind(dy, w, impl=impl, geometry=g)


def _bind_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  if not _native("kernel_grad", x, dy, g):
    return _lax_kernel_grad(x, dy, g)
  return kernel_grad_p.bind(x, dy, impl=impl, geometry=g)


def _bind(prim: core.Primitive, a: jax.Array, b: jax.Array, impl: str, geometry: ConvGeometry) -> jax.Array:
  """``prim.bind(a, b)`` through its entry point (lax's convolution for splits beyond the batch and C_out)."""
  entry = {conv_p: _bind_conv, input_grad_p: _bind_input_grad, kernel_grad_p: _bind_kernel_grad}[prim]
  return entry(a, b, geometry, impl)


def conv(x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``y = F(x, w)`` by the kernel ``impl`` (aliases such as ``"auto"`` resolved for ``g``).

  Args:
    x: ``(N, *spatial, C_in)``.
    w: ``(*kernel, C_in // groups, C_out)``.
    g: the validated geometry of the call.
    impl: a registered kernel name.

  Returns:
    y ``(N, *out_spatial, C_out)``. Under Explicit mesh axes, split like x's batch and w's C_out;
    any other split runs on lax's convolution, which XLA partitions (``docs/sharding.md``).

  Raises:
    ValueError: ``impl`` is unknown or refuses ``g``.
  """
  return _bind_conv(x, w, g, registry.resolve(impl, g).name)


def conv_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``dx = Bx(dy, w)``: the transpose of ``conv`` in x (a transposed convolution).

  Args:
    dy: ``(N, *out_spatial, C_out)``.
    w: ``(*kernel, C_in // groups, C_out)``.
    g: the validated geometry of the forward call.
    impl: a registered kernel name.

  Returns:
    dx ``(N, *spatial, C_in)``, split like dy's batch (summed over a C_out split); other splits run on lax.

  Raises:
    ValueError: ``impl`` is unknown or refuses ``g``.
  """
  return _bind_input_grad(dy, w, g, registry.resolve(impl, g).name)


def conv_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``dw = Bw(x, dy)``: the transpose of ``conv`` in w.

  Args:
    x: ``(N, *spatial, C_in)``.
    dy: ``(N, *out_spatial, C_out)``, its batch split like x's.
    g: the validated geometry of the forward call.
    impl: a registered kernel name.

  Returns:
    dw ``(*kernel, C_in // groups, C_out)``: each device's partial sum, all-reduced over the batch
    split (split like dy's C_out); other splits run on lax.

  Raises:
    ValueError: ``impl`` is unknown or refuses ``g``.
  """
  return _bind_kernel_grad(x, dy, g, registry.resolve(impl, g).name)


# --------------------------------------------------------------------------------------------
# the bias (see the module docstring)


def add_bias(y: jax.Array, b: jax.Array | None) -> jax.Array:
  """``y + b`` over the channel axis; ``b`` of shape ``(C_out,)`` or None."""
  if b is None:
    return y
  # Added in the accumulation dtype so that b's gradient (a sum over N and space) is too.
  acc = registry.accumulation_dtype(y.dtype)
  return (y.astype(acc) + b.astype(acc)).astype(y.dtype)


def channel_sum(dy: jax.Array) -> jax.Array:
  """dy ``(N, *spatial, C)`` summed over N and space (the bias's gradient), in the accumulation dtype, as dy's dtype."""
  acc = registry.accumulation_dtype(dy.dtype)
  return jnp.sum(dy.astype(acc), axis=tuple(range(dy.ndim - 1))).astype(dy.dtype)


conv_bias_p = core.Primitive("jaxconv_conv_bias")
kernel_bias_grad_p = core.Primitive("jaxconv_conv_kernel_bias_grad")
kernel_bias_grad_p.multiple_results = True


def _conv_bias_abstract(x, w, b, *, impl: str, geometry: ConvGeometry):
  return jax.core.ShapedArray(_geometry_for(x, geometry).out_shape, x.dtype)


def _kernel_bias_grad_abstract(x, dy, *, impl: str, geometry: ConvGeometry):
  return [jax.core.ShapedArray(geometry.w_shape, x.dtype), jax.core.ShapedArray((geometry.out_channels,), x.dtype)]


def _conv_bias_local(x: jax.Array, w: jax.Array, b: jax.Array, *, impl: str, geometry: ConvGeometry) -> jax.Array:
  """The kernel's fused forward on one device (or its forward and an add)."""
  g = _geometry_for(x, geometry)
  kernel = registry.get(impl)
  if g.empty or kernel.forward_bias is None:
    y = jnp.zeros(g.out_shape, x.dtype) if g.empty else _forward(kernel)(x, w, g)
    return add_bias(y, b)
  return kernel.forward_bias(x, w, b, g)


def _kernel_bias_grad_local(x: jax.Array, dy: jax.Array, *, impl: str, geometry: ConvGeometry):
  """The kernel's fused kernel and bias gradients on one device (or its kernel gradient and a reduction)."""
  g = _geometry_for(x, geometry)
  kernel = registry.get(impl)
  if g.empty or kernel.kernel_grad_bias is None:
    dw = jnp.zeros(g.w_shape, x.dtype) if g.empty else _kernel_grad(kernel)(x, dy, g)
    return [dw, channel_sum(dy)]
  return list(kernel.kernel_grad_bias(x, dy, g))


def _conv_bias_split(x: jax.Array, w: jax.Array, b: jax.Array, *, impl: str, geometry: ConvGeometry) -> jax.Array:
  """On several devices: the forward primitive (partitioned as it is) and XLA's add."""
  return add_bias(conv_p.bind(x, w, impl=impl, geometry=geometry), b)


def _kernel_bias_grad_split(x: jax.Array, dy: jax.Array, *, impl: str, geometry: ConvGeometry):
  """On several devices: the kernel-gradient primitive (partitioned as it is) and XLA's reduction."""
  return [kernel_grad_p.bind(x, dy, impl=impl, geometry=geometry), channel_sum(dy)]


def _fused_lowering(local: Callable, split: Callable, multiple_results: bool):
  def lowering(ctx: mlir.LoweringRuleContext, *args, impl: str, geometry: ConvGeometry):
    fn = split if _multi_device(ctx) else local
    return mlir.lower_fun(functools.partial(fn, impl=impl, geometry=geometry), multiple_results)(ctx, *args)

  return lowering


@functools.lru_cache(maxsize=256)
def _compiled_bias(prim: core.Primitive, impl: str, geometry: ConvGeometry):
  return jax.jit(functools.partial(prim.bind, impl=impl, geometry=geometry))


registry.add_replace_hook(_compiled_bias.cache_clear)
conv_bias_p.def_abstract_eval(_conv_bias_abstract)
kernel_bias_grad_p.def_abstract_eval(_kernel_bias_grad_abstract)
conv_bias_p.def_impl(lambda *args, impl, geometry: _compiled_bias(conv_bias_p, impl, geometry)(*args))
kernel_bias_grad_p.def_impl(lambda *args, impl, geometry: _compiled_bias(kernel_bias_grad_p, impl, geometry)(*args))
mlir.register_lowering(conv_bias_p, _fused_lowering(_conv_bias_local, _conv_bias_split, False))
mlir.register_lowering(kernel_bias_grad_p, _fused_lowering(_kernel_bias_grad_local, _kernel_bias_grad_split, True))


def _zero(t) -> bool:
  return type(t) is ad.Zero


def _zero_like(y: jax.Array) -> ad.Zero:
  """The symbolic zero tangent of ``y``."""
  return ad.Zero(jax.typeof(y).to_tangent_aval())


def _bias_linear(x: jax.Array, dw, db, g: ConvGeometry, impl: str) -> jax.Array | None:
  """``F(x, dw) + db``, linear in (dw, db), either a symbolic zero: one fused call for both; None for zero."""
  if _zero(dw):
    return None if _zero(db) else add_bias(jnp.zeros(_geometry_for(x, g).out_shape, x.dtype), db)
  if _zero(db):
    return _bind_conv(x, dw, g, impl)
  return conv_bias_p.bind(x, dw, db, impl=impl, geometry=g)


def _conv_bias_jvp(primals, tangents, *, impl: str, geometry: ConvGeometry):
  x, w, b = primals
  dx, dw, db = tangents
  y = conv_bias_p.bind(x, w, b, impl=impl, geometry=geometry)
  parts = [] if _zero(dx) else [_bind_conv(dx, w, geometry, impl)]
  term = _bias_linear(x, dw, db, geometry, impl)
  if term is not None:
    parts.append(term)
  if not parts:
    return y, _zero_like(y)
  return y, functools.reduce(jnp.add, parts)


def _conv_bias_transpose(ct, x, w, b, *, impl: str, geometry: ConvGeometry):
  """Linear in x (w, b known: the add's constant has no cotangent) or in (w, b) (x known)."""
  if ad.is_undefined_primal(x):
    ct_x = None if _zero(ct) else _bind_input_grad(ct, w, geometry, impl)
    return [ct_x, None, None]
  if _zero(ct):
    return [None, None, None]
  want_w, want_b = ad.is_undefined_primal(w), ad.is_undefined_primal(b)
  if want_w and want_b:
    dw, db = kernel_bias_grad_p.bind(x, ct, impl=impl, geometry=geometry)
    return [None, dw, db]
  if want_w:
    return [None, _bind_kernel_grad(x, ct, geometry, impl), None]
  return [None, None, channel_sum(ct)]


def _kernel_bias_grad_jvp(primals, tangents, *, impl: str, geometry: ConvGeometry):
  x, dy = primals
  dx, ddy = tangents
  out = kernel_bias_grad_p.bind(x, dy, impl=impl, geometry=geometry)
  t_dw, t_db = (None, None) if _zero(ddy) else kernel_bias_grad_p.bind(x, ddy, impl=impl, geometry=geometry)
  if not _zero(dx):
    term = _bind_kernel_grad(dx, dy, geometry, impl)
    t_dw = term if t_dw is None else t_dw + term
  tangents_out = [_zero_like(out[0]) if t_dw is None else t_dw, _zero_like(out[1]) if t_db is None else t_db]
  return out, tangents_out


def _kernel_bias_grad_transpose(cts, x, dy, *, impl: str, geometry: ConvGeometry):
  """Linear in dy (x known: ``F(x, ct_dw) + ct_db``) or in x (dy known: ``Bx(dy, ct_dw)``; db has no x)."""
  ct_dw, ct_db = cts
  if ad.is_undefined_primal(dy):
    return [None, _bias_linear(x, ct_dw, ct_db, geometry, impl)]
  return [None if _zero(ct_dw) else _bind_input_grad(dy, ct_dw, geometry, impl), None]


ad.primitive_jvps[conv_bias_p] = _conv_bias_jvp
ad.primitive_transposes[conv_bias_p] = _conv_bias_transpose
ad.primitive_jvps[kernel_bias_grad_p] = _kernel_bias_grad_jvp
ad.primitive_transposes[kernel_bias_grad_p] = _kernel_bias_grad_transpose


def _conv_bias_batcher(args, dims, *, impl: str, geometry: ConvGeometry):
  """vmap: an extra axis of x alone folds into its batch (as for ``conv_p``); anything else maps."""
  (x, w, b), (dx, dw, db) = args, dims
  if dw is None and db is None:
    x = jnp.moveaxis(x, dx, 1)
    n, size = x.shape[:2]
    y = conv_bias(x.reshape(n * size, *x.shape[2:]), w, b, geometry.with_batch(n * size), impl)
    return y.reshape(n, size, *y.shape[1:]), 1
  return _map_over(lambda x, w, b: conv_bias(x, w, b, geometry, impl), args, dims), 0


def _kernel_bias_grad_batcher(args, dims, *, impl: str, geometry: ConvGeometry):
  """vmap: mapped over the batched operands (a per-example kernel gradient is one call per example)."""
  out = _map_over(lambda x, dy: tuple(kernel_bias_grad_p.bind(x, dy, impl=impl, geometry=geometry)), args, dims)
  return list(out), [0, 0]


batching.primitive_batchers[conv_bias_p] = _conv_bias_batcher
batching.primitive_batchers[kernel_bias_grad_p] = _kernel_bias_grad_batcher


def conv_bias(x: jax.Array, w: jax.Array, b: jax.Array | None, g: ConvGeometry, impl: str) -> jax.Array:
  """``y = F(x, w) + b`` by the kernel ``impl``: in one call where it adds biases (``forward_bias``).

  Args:
    x: ``(N, *spatial, C_in)``.
    w: ``(*kernel, C_in // groups, C_out)``.
    b: ``(C_out,)`` in x's dtype, or None.
    g: the validated geometry of the call.
    impl: a registered kernel name.

  Returns:
    y ``(N, *out_spatial, C_out)``; b's gradient comes with the kernel's in one call where the
    kernel gives both (``kernel_grad_bias``). Sharded operands (Explicit axes) and kernels
    without the fused functions get ``conv`` and XLA's add.

  Raises:
    ValueError: ``impl`` is unknown or refuses ``g``.
  """
  kernel = registry.resolve(impl, g)
  unsharded = all(not any(_explicit_specs(jax.typeof(a))) for a in (x, w) + (() if b is None else (b,)))
  if b is None or kernel.forward_bias is None or not unsharded:
    return add_bias(_bind_conv(x, w, g, kernel.name), b)
  return conv_bias_p.bind(x, w, b, impl=kernel.name, geometry=g)


__all__ = [
  "add_bias",
  "channel_sum",
  "conv",
  "conv_bias",
  "conv_bias_p",
  "conv_input_grad",
  "conv_kernel_grad",
  "conv_p",
  "Layout",
  "auto_layout",
  "explicit_layout",
  "input_grad_p",
  "kernel_bias_grad_p",
  "kernel_grad_p",
]
