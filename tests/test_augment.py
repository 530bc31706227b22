"""jaxconv.training.augment: shifts and affine warps against numpy and scipy.ndimage, under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from jaxconv.training import augment
from jaxconv.training.augment import AugmentConfig

# One compile each: eager dispatch of the vmapped gathers is what makes these tests slow otherwise.
augment_jit = jax.jit(augment.augment, static_argnums=2)
affine_jit = jax.jit(augment.affine, static_argnums=3)
shift_jit = jax.jit(augment.shift, static_argnums=2)
sample_affine_jit = jax.jit(augment.sample_affine, static_argnums=(1, 2))


def images_of(rng: np.random.Generator, shape=(5, 9, 8, 2)) -> np.ndarray:
  return rng.standard_normal(shape).astype(np.float32)


def shifted_reference(images: np.ndarray, shifts: np.ndarray, fill: float | None) -> np.ndarray:
  """``out[n, i, j] = images[n, i - dy, j - dx]`` by numpy pad and crop."""
  _, h, w, _ = images.shape
  out = np.empty_like(images)
  for k, (image, (dy, dx)) in enumerate(zip(images, shifts)):
    pad = ((h, h), (w, w), (0, 0))
    padded = np.pad(image, pad, mode="edge") if fill is None else np.pad(image, pad, constant_values=fill)
    out[k] = padded[h - dy : 2 * h - dy, w - dx : 2 * w - dx]
  return out


def test_zero_strength_is_identity(rng):
  x = images_of(rng)
  np.testing.assert_array_equal(np.asarray(augment.augment(jax.random.key(0), jnp.asarray(x), AugmentConfig())), x)


@pytest.mark.parametrize("fill", [None, -0.5])
def test_shift_matches_numpy_pad_and_crop(rng, fill):
  x = images_of(rng)
  shifts = np.array([[0, 0], [1, -2], [-3, 4], [9, -8], [-9, 8]], np.int32)
  got = shift_jit(jnp.asarray(x), jnp.asarray(shifts), fill)
  np.testing.assert_array_equal(np.asarray(got), shifted_reference(x, shifts, fill))


@pytest.mark.parametrize("fill", [None, -0.5])
@pytest.mark.parametrize("max_shift", [0, 1, 3])
def test_shift_with_max_shift_pads_less_and_gives_the_same_images(rng, fill, max_shift):
  x = images_of(rng)
  shifts = np.array(
    [[0, 0], [max_shift, -max_shift], [-max_shift, max_shift], [max_shift, 0], [0, -max_shift]], np.int32
  )
  shift = jax.jit(augment.shift, static_argnums=(2, 3))
  got = shift(jnp.asarray(x), jnp.asarray(shifts), fill, max_shift)
  np.testing.assert_array_equal(np.asarray(got), shifted_reference(x, shifts, fill))
  # The pad is max_shift cells on each side, not a whole image.
  n, h, w, c = x.shape
  text = shift.lower(jnp.asarray(x), jnp.asarray(shifts), fill, max_shift).as_text()
  assert f"tensor<{n}x{h + 2 * max_shift}x{w + 2 * max_shift}x{c}xf32>" in text or not max_shift
  assert f"tensor<{n}x{3 * h}x{3 * w}x{c}xf32>" not in text


def test_shift_refuses_a_bad_max_shift(rng):
  with pytest.raises(ValueError, match="max_shift must be None or an int >= 0; got -1"):
    augment.shift(jnp.asarray(images_of(rng)), jnp.zeros((5, 2), jnp.int32), None, -1)


def test_shift_inside_the_image_is_a_roll(rng):
  x = np.zeros((1, 10, 10, 1), np.float32)
  x[0, 3:6, 2:5, 0] = rng.standard_normal((3, 3))
  got = shift_jit(jnp.asarray(x), jnp.asarray([[2, -1]], jnp.int32), None)
  np.testing.assert_array_equal(np.asarray(got), np.roll(x, (2, -1), axis=(1, 2)))


def test_affine_identity_and_integer_offsets_are_exact_shifts(rng):
  x = images_of(rng)
  eye = jnp.broadcast_to(jnp.eye(2), (5, 2, 2))
  np.testing.assert_array_equal(np.asarray(affine_jit(jnp.asarray(x), eye, jnp.zeros((5, 2)))), x)
  shifts = np.array([[0, 1], [1, -2], [-3, 4], [2, 2], [-1, 0]], np.int32)
  got = affine_jit(jnp.asarray(x), eye, -jnp.asarray(shifts, jnp.float32))
  np.testing.assert_array_equal(np.asarray(got), shifted_reference(x, shifts, None))


def test_affine_quarter_turn_is_rot90(rng):
  x = images_of(rng, (2, 7, 7, 3))
  quarter = jnp.broadcast_to(jnp.array([[0.0, 1.0], [-1.0, 0.0]]), (2, 2, 2))
  got = affine_jit(jnp.asarray(x), quarter, jnp.zeros((2, 2)))
  np.testing.assert_allclose(np.asarray(got), np.rot90(x, 1, axes=(1, 2)), atol=1e-6)


@pytest.mark.parametrize("fill", [None, 0.25])
def test_affine_matches_scipy_affine_transform(rng, fill):
  x = images_of(rng, (3, 9, 8, 2))
  matrices = (np.eye(2) + 0.3 * rng.standard_normal((3, 2, 2))).astype(np.float32)
  offsets = rng.uniform(-2, 2, (3, 2)).astype(np.float32)
  got = np.asarray(affine_jit(jnp.asarray(x), jnp.asarray(matrices), jnp.asarray(offsets), fill))
  centre = np.array([(9 - 1) / 2, (8 - 1) / 2])
  mode, cval = ("nearest", 0.0) if fill is None else ("grid-constant", fill)
  for n in range(3):
    for c in range(2):
      want = scipy.ndimage.affine_transform(
        x[n, :, :, c].astype(np.float64),
        matrices[n],
        offset=centre - matrices[n] @ centre + offsets[n],
        order=1,
        mode=mode,
        cval=cval,
      )
      np.testing.assert_allclose(got[n, :, :, c], want, atol=2e-5)


def test_augment_shifts_only_is_shift_with_the_drawn_shifts(rng):
  x = jnp.asarray(images_of(rng))
  key, config = jax.random.key(3), AugmentConfig(max_shift=2)
  draws = augment.sample_shifts(jax.random.split(key)[0], 5, 2)
  assert np.abs(np.asarray(draws)).max() <= 2
  np.testing.assert_array_equal(np.asarray(augment_jit(key, x, config)), np.asarray(shift_jit(x, draws, None)))


def test_sample_affine_draws_within_bounds():
  key, n = jax.random.key(1), 256
  rotation = np.asarray(sample_affine_jit(key, n, AugmentConfig(max_rotation=15.0)))
  np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(2), (n, 2, 2)), atol=1e-6)
  angles = np.degrees(np.arctan2(rotation[:, 0, 1], rotation[:, 0, 0]))
  assert np.abs(angles).max() <= 15.0 + 1e-4 and np.abs(angles).max() > 10.0
  zoom = np.asarray(sample_affine_jit(key, n, AugmentConfig(max_scale=0.2)))
  np.testing.assert_array_equal(zoom[:, 0, 1], 0.0)
  np.testing.assert_allclose(zoom[:, 0, 0], zoom[:, 1, 1])
  assert (zoom[:, 0, 0] >= 1 / 1.2 - 1e-6).all() and (zoom[:, 0, 0] <= 1 / 0.8 + 1e-6).all()


def test_augment_under_jit_matches_eager(rng):
  x = jnp.asarray(images_of(rng, (4, 12, 12, 1)))
  config = AugmentConfig(max_shift=2)
  np.testing.assert_array_equal(
    np.asarray(augment_jit(jax.random.key(0), x, config)), np.asarray(augment.augment(jax.random.key(0), x, config))
  )


@pytest.mark.parametrize(
  "config", [AugmentConfig(max_shift=2), AugmentConfig(max_shift=1, max_rotation=10.0, max_scale=0.1, max_shear=5.0)]
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_augment_keeps_shape_and_dtype_and_depends_on_the_key(rng, config, dtype):
  x = jnp.asarray(images_of(rng, (4, 12, 12, 1)), dtype)
  out = augment_jit(jax.random.key(0), x, config)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_array_equal(
    np.asarray(augment_jit(jax.random.key(0), x, config), np.float32), np.asarray(out, np.float32)
  )
  other = augment_jit(jax.random.key(1), x, config)
  assert not np.array_equal(np.asarray(other, np.float32), np.asarray(out, np.float32))


def test_warped_constant_image_stays_constant():
  x = jnp.full((3, 10, 10, 1), 0.7, jnp.float32)
  config = AugmentConfig(max_shift=3, max_rotation=20.0, max_scale=0.2, max_shear=10.0)
  np.testing.assert_allclose(np.asarray(augment_jit(jax.random.key(5), x, config)), 0.7, atol=1e-6)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"max_shift": -1}, "max_shift must be an int >= 0; got -1"),
    ({"max_shift": 1.5}, "max_shift must be an int >= 0; got 1.5"),
    ({"max_rotation": 180.0}, r"max_rotation must be a number in \[0, 180\); got 180.0"),
    ({"max_scale": 1.0}, r"max_scale must be a number in \[0, 1\); got 1.0"),
    ({"max_shear": -2.0}, r"max_shear must be a number in \[0, 90\); got -2.0"),
    ({"fill": "edge"}, "fill must be None or a number; got 'edge'"),
  ],
)
def test_config_errors_name_the_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    AugmentConfig(**kwargs)


def test_image_and_argument_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\); got shape \(8, 8\)"):
    augment.augment(key, jnp.zeros((8, 8)), AugmentConfig(max_shift=1))
  with pytest.raises(TypeError, match="images must have a floating dtype; got int32"):
    augment.augment(key, jnp.zeros((1, 8, 8, 1), jnp.int32), AugmentConfig(max_shift=1))
  with pytest.raises(TypeError, match="config must be an AugmentConfig; got dict"):
    augment.augment(key, jnp.zeros((1, 8, 8, 1)), {"max_shift": 1})
  with pytest.raises(ValueError, match=r"shifts must have shape \(2, 2\)"):
    augment.shift(jnp.zeros((2, 8, 8, 1)), jnp.zeros((3, 2), jnp.int32))
  with pytest.raises(TypeError, match="shifts must have an integer dtype; got float32"):
    augment.shift(jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"matrices must have shape \(2, 2, 2\)"):
    augment.affine(jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 2)), jnp.zeros((2, 2)))


def test_config_fields_round_trip():
  block = augment.config_fields(max_shift=2, max_rotation=10.0)
  assert type(block) is dict and block["fill"] is None and block["max_scale"] == 0.0  # plain, no ml_collections
  assert augment.from_config(block) == AugmentConfig(max_shift=2, max_rotation=10.0)
  assert augment.from_config({"max_shift": 1}) == AugmentConfig(max_shift=1)
  block["fill"] = -0.4
  assert augment.from_config(block).fill == -0.4
  with pytest.raises(ValueError, match=r"unknown augment fields \['rotation'\]"):
    augment.config_fields(rotation=10.0)
  with pytest.raises(ValueError, match="max_shift must be an int >= 0; got -2"):
    augment.config_fields(max_shift=-2)
