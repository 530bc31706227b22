"""The default kernel: picks an implementation per call from static shapes only."""

from __future__ import annotations

import jax

from jaxconv.kernels.registry import ConvSpec, get, register


def choose(spec: ConvSpec) -> str:
  """The kernel name ``"auto"`` runs for ``spec`` (a pure function of static shapes)."""
  del spec
  return "lax"


@register("auto")
def conv_auto(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """The kernel that the benchmark found fastest on CPU for this call's shapes (see ``choose``)."""
  spec = ConvSpec.of(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
  return get(choose(spec)).fn(x, w, **spec.kwargs())
