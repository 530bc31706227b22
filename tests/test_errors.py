"""Bad arguments raise ValueError/TypeError naming the argument, eagerly and under jax.jit."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import jaxconv as jc

SIGNAL, TAPS = np.ones(6, np.float32), np.ones(3, np.float32)
X, W, B = np.ones((1, 6, 6, 2), np.float32), np.ones((3, 3, 2, 4), np.float32), np.ones(4, np.float32)


def case(id: str, fn, exc: type[Exception], match: str, *arrays, **kwargs):
  """A ``pytest.param``: ``fn(*arrays, **kwargs)`` raises ``exc`` whose message starts with ``match``."""
  return pytest.param(fn, arrays, kwargs, exc, f"^{match}\\b", id=id)


SIGNAL_ERRORS = [
  case(f"{fn.__name__}-{id}", fn, exc, match, *arrays, **kwargs)
  for fn in (jc.correlate, jc.convolve)
  for id, exc, match, arrays, kwargs in [
    ("stride-0", ValueError, "stride", (SIGNAL, TAPS), dict(stride=0)),
    ("stride-float", TypeError, "stride", (SIGNAL, TAPS), dict(stride=1.5)),
    ("dilation-0", ValueError, "dilation", (SIGNAL, TAPS), dict(dilation=0)),
    ("padding-negative", ValueError, "padding", (SIGNAL, TAPS), dict(padding=-1)),
    ("padding-unknown-mode", ValueError, "padding", (SIGNAL, TAPS), dict(padding="sam")),
    ("padding-float", TypeError, "padding", (SIGNAL, TAPS), dict(padding=1.5)),
    ("padding-bare-pair-1d", ValueError, "padding", (SIGNAL, TAPS), dict(padding=(1, 2))),
    ("kernel-too-large", ValueError, "w", (SIGNAL[:2], TAPS), {}),
    ("dilated-kernel-too-large", ValueError, "w", (SIGNAL, TAPS), dict(dilation=3)),
    ("rank-mismatch", ValueError, "w", (X[0, :, :, 0], TAPS), {}),
    ("rank-4", ValueError, "x", (X, X), {}),
    ("unknown-impl", ValueError, "impl", (SIGNAL, TAPS), dict(impl="nope")),
    ("complex", TypeError, "x", (SIGNAL.astype(np.complex64), TAPS), {}),
  ]
]

CONV_ERRORS = [
  case(f"{fn.__name__}-{id}", fn, exc, match, *arrays, **kwargs)
  for fn in (jc.conv, jc.conv_transpose)
  for id, exc, match, arrays, kwargs in [
    ("stride-0-on-one-axis", ValueError, "stride", (X, W), dict(stride=(1, 0))),
    ("stride-wrong-length", ValueError, "stride", (X, W), dict(stride=(1, 1, 1))),
    ("dilation-negative", ValueError, "dilation", (X, W), dict(dilation=-1)),
    ("padding-negative-pair", ValueError, "padding", (X, W), dict(padding=[(0, 1), (-1, 0)])),
    ("padding-triple", ValueError, "padding", (X, W), dict(padding=[(0, 1, 2), (0, 0)])),
    ("padding-wrong-length", ValueError, "padding", (X, W), dict(padding=[1, 2, 3])),
    ("channel-mismatch", ValueError, "w", (X, W[:, :, :1]), {}),
    ("groups-0", ValueError, "groups", (X, W), dict(groups=0)),
    ("groups-float", TypeError, "groups", (X, W), dict(groups=1.0)),
    ("groups-not-dividing-c-in", ValueError, "groups", (X, W[:, :, :1]), dict(groups=3)),
    ("groups-not-dividing-c-out", ValueError, "groups", (X, W[:, :, :1, :3]), dict(groups=2)),
    ("x-rank-2", ValueError, "x", (X[0, 0], W), {}),
    ("x-rank-6", ValueError, "x", (X[None, None], W), {}),
    ("w-rank", ValueError, "w", (X, W[0]), {}),
    ("bias-shape", ValueError, "b", (X, W, B[:3]), {}),
    ("bias-rank", ValueError, "b", (X, W, B[None]), {}),
    ("unknown-impl", ValueError, "impl", (X, W), dict(impl="nope")),
    ("impl-not-a-string", TypeError, "impl", (X, W), dict(impl=1)),
  ]
] + [
  case("conv-kernel-too-large", jc.conv, ValueError, "w", X, np.ones((7, 3, 2, 4), np.float32)),
  case("conv-dilated-kernel-too-large", jc.conv, ValueError, "w", X, W, dilation=(1, 3)),
  case("conv-x-not-numbers", jc.conv, TypeError, "x", x="abc", w=W),
  case("conv_transpose-empty-output", jc.conv_transpose, ValueError, "padding", X[:, :2, :2], W, padding=3),
]

POOL_ERRORS = [
  case(f"{fn.__name__}-{id}", fn, exc, match, X, **kwargs)
  for fn in (jc.max_pool, jc.avg_pool)
  for id, exc, match, kwargs in [
    ("window-0", ValueError, "window", dict(window=0)),
    ("window-wrong-length", ValueError, "window", dict(window=(2, 2, 2))),
    ("window-too-large", ValueError, "window", dict(window=7)),
    ("stride-0", ValueError, "stride", dict(window=2, stride=0)),
    ("padding-negative", ValueError, "padding", dict(window=2, padding=-1)),
  ]
] + [case(f"{fn.__name__}-x-rank", fn, ValueError, "x", X[0, 0], window=2) for fn in (jc.max_pool, jc.avg_pool)]


# Found by probing the API as a user with bad input would (issue 12): each once reached XLA, raised
# an OverflowError or AttributeError, or named the wrong argument.
HUGE = 2**40  # padding that would need TiBs
PROBED_ERRORS = (
  [
    case(f"{fn.__name__}-{id}", fn, exc, match, *arrays, **kwargs)
    for fn, arrays in [
      (jc.correlate, (SIGNAL, TAPS)),
      (jc.convolve, (SIGNAL, TAPS)),
      (jc.conv, (X, W)),
      (jc.conv_transpose, (X, W)),
    ]
    for id, exc, match, kwargs in [
      ("stride-2**63", ValueError, "stride", dict(stride=2**63)),
      ("stride-2**64", ValueError, "stride", dict(stride=2**64)),
      ("dilation-2**63", ValueError, "dilation", dict(dilation=2**63)),
      ("stride-jnp-scalar", TypeError, "stride", dict(stride=jax.numpy.int32(2))),
      ("stride-numpy-array", TypeError, "stride", dict(stride=np.array(2))),
      ("stride-nan", TypeError, "stride", dict(stride=float("nan"))),
      ("stride-bool", TypeError, "stride", dict(stride=True)),
      ("padding-nan", TypeError, "padding", dict(padding=float("nan"))),
      ("padding-none", TypeError, "padding", dict(padding=None)),
      ("padding-bool", TypeError, "padding", dict(padding=True)),
      ("padding-huge", ValueError, "padding", dict(padding=HUGE)),
      ("padding-2**70", ValueError, "padding", dict(padding=2**70)),
      ("impl-wrong-case", ValueError, "impl", dict(impl="LAX")),
    ]
  ]
  + [
    case(f"{fn.__name__}-{id}", fn, TypeError, name, *arrays)
    for fn, good in [(jc.correlate, (SIGNAL, TAPS)), (jc.conv, (X, W)), (jc.conv_transpose, (X, W))]
    for id, name, arrays in [
      ("x-none", "x", (None, good[1])),
      ("w-none", "w", (good[0], None)),
      ("x-str-array", "x", (np.full(good[0].shape, "a"), good[1])),
      ("x-object-array", "x", (good[0].astype(object), good[1])),
      ("x-datetime", "x", (np.zeros(good[0].shape, "datetime64[D]"), good[1])),
      ("w-complex", "w", (good[0], good[1].astype(np.complex64))),
      ("x-ragged-list", "x", ([[1.0, 2.0], [3.0]], good[1])),
    ]
  ]
  + [
    case("conv-b-none-like-string", jc.conv, TypeError, "b", X, W, "abc"),
    case("conv-groups-2**70", jc.conv, ValueError, "groups", X, W, groups=2**70),
    case("conv-groups-jnp-scalar", jc.conv, TypeError, "groups", X, W, groups=jax.numpy.int32(1)),
    case("conv-padding-numpy-pairs", jc.conv, TypeError, "padding", X, W, padding=np.array([[1, 1], [1, 1]])),
    case("conv-padding-bool-pair", jc.conv, ValueError, "padding", X, W, padding=((True, 0), (0, 0))),
    case("conv-padding-mode-not-a-string", jc.conv, ValueError, "padding_mode", X, W, padding_mode=3),
    case("conv-causal-2d", jc.conv, ValueError, "padding", X, W, padding="causal"),
    case("conv_transpose-causal-2d", jc.conv_transpose, ValueError, "padding", X, W, padding="causal"),
    # conv_transpose's output grows with its stride and dilation: name the one that makes it too big.
    case("conv_transpose-stride-huge", jc.conv_transpose, ValueError, "stride", X, W, stride=HUGE),
    case("conv_transpose-stride-2**20", jc.conv_transpose, ValueError, "stride", X, W, stride=2**20),
    case("conv_transpose-same-stride-huge", jc.conv_transpose, ValueError, "stride", X, W, padding="same", stride=HUGE),
    case("conv_transpose-dilation-2**20", jc.conv_transpose, ValueError, "dilation", X, W, dilation=2**20),
    case(
      "conv_transpose-output-padding-2**63",
      jc.conv_transpose,
      ValueError,
      "output_padding",
      X,
      W,
      stride=2**61,
      output_padding=2**63,
    ),
    case("conv_transpose-padding-mode", jc.conv_transpose, ValueError, "padding_mode", X, W, padding_mode="reflect"),
    case("correlate-x-rank-0", jc.correlate, ValueError, "x", np.float32(1.0), TAPS),
    case("correlate-x-jnp-scalar", jc.correlate, ValueError, "x", jax.numpy.float32(1.0), jax.numpy.float32(1.0)),
    case("correlate-w-scalar", jc.correlate, ValueError, "w", SIGNAL, 1.0),
    case("conv-w-scalar", jc.conv, ValueError, "w", X, 1.0),
    case("conv-impl-empty", jc.conv, ValueError, "impl", X, W, impl=""),
  ]
  + [
    case(f"{fn.__name__}-{id}", fn, exc, match, X, **kwargs)
    for fn in (jc.max_pool, jc.avg_pool)
    for id, exc, match, kwargs in [
      ("padding-huge", ValueError, "padding", dict(window=2, padding=HUGE)),
      ("stride-2**63", ValueError, "stride", dict(window=2, stride=2**63)),
      ("window-2**63", ValueError, "window", dict(window=2**63)),
      ("window-float", TypeError, "window", dict(window=2.0)),
      ("window-none", TypeError, "window", dict(window=None)),
    ]
  ]
  + [
    case(f"{fn.__name__}-x-complex", fn, TypeError, "x", X.astype(np.complex64), 2) for fn in (jc.max_pool, jc.avg_pool)
  ]
  + [
    case(f"avg_pool-count_include_pad-{id}", jc.avg_pool, TypeError, "count_include_pad", X, 2, count_include_pad=v)
    for id, v in [("str", "no"), ("int", 0), ("none", None)]
  ]
)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn, arrays, kwargs, exc, match", SIGNAL_ERRORS + CONV_ERRORS + POOL_ERRORS + PROBED_ERRORS)
def test_bad_arguments_raise_naming_them(fn, arrays, kwargs, exc, match, jit: bool):
  """The error type and a message that starts with the bad argument's name, also while tracing."""
  call = functools.partial(fn, **kwargs)
  # Under jit, numeric arrays are traced; anything else (None, strings, object arrays) is closed
  # over, since jax.jit itself refuses such arguments before jaxconv sees them.
  traced = [isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in arrays]

  def with_traced(*values):
    it = iter(values)
    return call(*(next(it) if t else a for a, t in zip(arrays, traced)))

  with pytest.raises(exc, match=match):
    if jit:
      jax.jit(with_traced)(*(a for a, t in zip(arrays, traced) if t))
    else:
      call(*arrays)


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(spatial=(5, 5), kernel=(3,)), ValueError, "kernel"),
    (dict(spatial=(5,), kernel=(0,)), ValueError, "kernel"),
    (dict(spatial=(-1,), kernel=(1,)), ValueError, "spatial"),
    (dict(spatial=(3,), kernel=(5,)), ValueError, "kernel"),
    (dict(spatial=(5,), kernel=(3,), stride=0), ValueError, "stride"),
    (dict(spatial=(5,), kernel=(3,), dilation=(1, 1)), ValueError, "dilation"),
    (dict(spatial=(5,), kernel=(3,), padding="half"), ValueError, "padding"),
    (dict(spatial="5", kernel=3), TypeError, "spatial"),
  ],
)
def test_output_shape_errors(kwargs: dict, exc: type[Exception], match: str):
  """output_shape validates like the functions whose shapes it predicts."""
  with pytest.raises(exc, match=f"^{match}\\b"):
    jc.output_shape(**kwargs)


@pytest.mark.parametrize("pool", [jc.max_pool, jc.avg_pool])
def test_pool_padding_as_wide_as_the_window_is_refused(pool):
  """A window that would see only padding (pad >= window on a side) is an error, as in PyTorch."""
  with pytest.raises(ValueError, match="^padding"):
    pool(np.ones((1, 4, 4, 1), np.float32), 2, padding=2)
