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
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core
from jax.interpreters import ad, batching, mlir

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels import registry

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


def _primitive(
  name: str, raw_of: Callable[[registry.Kernel], Raw], shape_of: Callable[[ConvGeometry], tuple[int, ...]]
):
  """A primitive ``p(a, b; impl, geometry)`` lowered to ``raw_of(kernel)(a, b, geometry)``.

  ``shape_of`` gives the result shape; its batch axis (all but the kernel gradient's) is the
  operands' own, which batching may have enlarged.
  """
  prim = core.Primitive(name)

  def geometry_for(a: jax.Array | jax.core.ShapedArray, geometry: ConvGeometry) -> ConvGeometry:
    return geometry.with_batch(a.shape[0]) if a.shape[0] != geometry.batch else geometry

  def abstract_eval(a, b, *, impl: str, geometry: ConvGeometry):
    del b, impl
    return jax.core.ShapedArray(shape_of(geometry_for(a, geometry)), a.dtype)

  def lower(a: jax.Array, b: jax.Array, *, impl: str, geometry: ConvGeometry) -> jax.Array:
    g = geometry_for(a, geometry)
    # ``jaxconv.ops`` answers empty calls before binding, but batching can still empty one here:
    # vmap over a zero-size axis folds into a batch of 0 (kernels need at least one element).
    if g.empty:
      return jnp.zeros(shape_of(g), a.dtype)
    return raw_of(registry.get(impl))(a, b, g)

  @functools.lru_cache(maxsize=256)
  def compiled(impl: str, geometry: ConvGeometry):
    return jax.jit(functools.partial(lower, impl=impl, geometry=geometry))

  registry.add_replace_hook(compiled.cache_clear)  # a replaced kernel must not run from here
  prim.def_abstract_eval(abstract_eval)
  prim.def_impl(lambda a, b, *, impl, geometry: compiled(impl, geometry)(a, b))
  mlir.register_lowering(prim, mlir.lower_fun(lower, multiple_results=False))
  return prim


def _x_shape(g: ConvGeometry) -> tuple[int, ...]:
  return g.x_shape


def _out_shape(g: ConvGeometry) -> tuple[int, ...]:
  return g.out_shape


def _w_shape(g: ConvGeometry) -> tuple[int, ...]:
  return g.w_shape


conv_p = _primitive("jaxconv_conv", _forward, _out_shape)
input_grad_p = _primitive("jaxconv_conv_input_grad", _input_grad, _x_shape)
kernel_grad_p = _primitive("jaxconv_conv_kernel_grad", _kernel_grad, _w_shape)


# Transposes (ad.defbilinear): ``ct`` is the result's cotangent; the operand being transposed
# is an undefined primal, the other one is known.
def _conv_t_x(ct, x, w, *, impl, geometry):
  return input_grad_p.bind(ct, w, impl=impl, geometry=geometry)


def _conv_t_w(ct, x, w, *, impl, geometry):
  return kernel_grad_p.bind(x, ct, impl=impl, geometry=geometry)


def _input_grad_t_dy(ct, dy, w, *, impl, geometry):
  return conv_p.bind(ct, w, impl=impl, geometry=geometry)


def _input_grad_t_w(ct, dy, w, *, impl, geometry):
  return kernel_grad_p.bind(ct, dy, impl=impl, geometry=geometry)


def _kernel_grad_t_x(ct, x, dy, *, impl, geometry):
  return input_grad_p.bind(dy, ct, impl=impl, geometry=geometry)


def _kernel_grad_t_dy(ct, x, dy, *, impl, geometry):
  return conv_p.bind(x, ct, impl=impl, geometry=geometry)


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


def conv(x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``y = F(x, w)`` by the kernel ``impl`` (aliases such as ``"auto"`` resolved for ``g``)."""
  return conv_p.bind(x, w, impl=registry.resolve(impl, g).name, geometry=g)


def conv_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``dx = Bx(dy, w)``: the transpose of ``conv`` in x (a transposed convolution)."""
  return input_grad_p.bind(dy, w, impl=registry.resolve(impl, g).name, geometry=g)


def conv_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry, impl: str) -> jax.Array:
  """``dw = Bw(x, dy)``: the transpose of ``conv`` in w."""
  return kernel_grad_p.bind(x, dy, impl=registry.resolve(impl, g).name, geometry=g)


__all__ = ["conv", "conv_input_grad", "conv_kernel_grad", "conv_p", "input_grad_p", "kernel_grad_p"]
