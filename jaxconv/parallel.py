"""Data parallelism with JAX's SPMD machinery: a 1-D device mesh, shardings, multi-host start-up.

The mesh has one axis, ``"data"``. Batches are split along their leading axis over it, parameters
and optimiser state are replicated, and the all-reduces come from the compiler: nothing here
calls a collective by hand. The model runs under ``shard_map`` (``per_device``), each device on
its own rows, so that every conv kernel keeps its work local, also one that XLA cannot split
along the batch (FFT, Pallas); JAX differentiates it into a sum of the per-device gradients.

Datasets live on the devices split along their example axis: of ``D`` devices, device ``d`` holds
the ``d``-th contiguous block of ``N / D`` examples (its *shard*). Every global batch of ``B`` takes
``B / D`` rows from each shard where it lies (``gather_shards``), so no example crosses devices,
and with one device this is plain indexing. On several hosts (``jax.distributed``) each process
builds only the blocks of its own devices (``process_rows``, ``shard_examples``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
  coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """Start ``jax.distributed`` (one process per host) unless it runs already; call it before any JAX computation.

  Args:
    coordinator_address: ``"host:port"`` of process 0.
    num_processes: the number of processes.
    process_id: this process's index.

  Arguments left None are JAX's to find: ``JAX_COORDINATOR_ADDRESS``, or SLURM, Open MPI,
  Kubernetes, Cloud TPU.
  """
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh with one Auto axis ``"data"`` over the first ``num_devices`` devices.

  Args:
    num_devices: how many devices (0: every device; on several processes, 0 or all of them).

  Returns:
    The mesh; the compiler propagates shardings from the inputs (Auto axes; ``jax.make_mesh``
    defaults to Explicit ones).

  Raises:
    ValueError: ``num_devices`` is negative or more than there are, naming it.
  """
  available = jax.device_count()
  if num_devices < 0:
    raise ValueError(f"num_devices must be >= 0 (0: every device); got {num_devices}")
  if num_devices > available:
    raise ValueError(
      f"num_devices={num_devices} is more than the {available} {jax.devices()[0].platform} devices available"
    )
  if jax.process_count() > 1 and num_devices not in (0, available):
    raise ValueError(
      f"num_devices={num_devices} must be 0 or {available} (every device) on {jax.process_count()} processes"
    )
  num_devices = num_devices or available
  return jax.make_mesh((num_devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:num_devices])


def sharding(mesh: Mesh, *spec: str | None) -> NamedSharding:
  """``NamedSharding(mesh, P(*spec))``: ``sharding(mesh)`` replicates, ``sharding(mesh, "data")`` splits axis 0."""
  return NamedSharding(mesh, PartitionSpec(*spec))


def num_shards(mesh: Mesh | None) -> int:
  """Devices along ``"data"``; 1 without a mesh."""
  return 1 if mesh is None else mesh.shape[DATA_AXIS]


def check_divisible(value: int, name: str, mesh: Mesh) -> None:
  """Raise ``ValueError`` naming ``name`` unless ``value`` splits evenly over the mesh's devices."""
  devices = num_shards(mesh)
  if value % devices:
    raise ValueError(f"{name}={value} must be a multiple of the {devices} devices of the mesh")


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes metrics, plots and logs."""
  return jax.process_index() == 0


# --------------------------------------------------------------------------------------------
# placing arrays


def process_rows(num_rows: int, mesh: Mesh) -> slice:
  """The rows of a ``(num_rows, ...)`` array split along ``"data"`` that this process's devices hold."""
  # jax.devices() lists each process's devices together, so a process's shards are one block.
  spans = [
    range(num_rows)[index[0]]
    for index in sharding(mesh, DATA_AXIS).addressable_devices_indices_map((num_rows,)).values()
    if index is not None
  ]
  return slice(min(s.start for s in spans), max(s.stop for s in spans))


def shard_examples(local: Any, mesh: Mesh, num_rows: int) -> Any:
  """Global ``(num_rows, ...)`` arrays split along ``"data"``, from this process's rows (numpy, ``process_rows``)."""
  split = sharding(mesh, DATA_AXIS)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(split, a, (num_rows, *a.shape[1:])), local)


def global_array(value: Any, layout: NamedSharding) -> jax.Array:
  """``value``, the same on every process, as a global array laid out by ``layout`` (typed PRNG keys too)."""
  if isinstance(value, jax.Array) and jax.numpy.issubdtype(value.dtype, jax.dtypes.prng_key):
    data = global_array(jax.random.key_data(value), layout)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, layout, lambda index: value[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every array of ``tree``, the same on every process, copied to every device of ``mesh``."""
  return jax.tree.map(lambda a: global_array(a, sharding(mesh)), tree)


# --------------------------------------------------------------------------------------------
# inside the compiled step


def gather_shards(tree: Any, rows: jax.Array, mesh: Mesh | None) -> Any:
  """Rows ``(B,)`` of the ``(N, ...)`` arrays of ``tree``, where block ``d`` of ``rows`` indexes shard ``d``."""
  shards = num_shards(mesh)

  def gather(a: jax.Array) -> jax.Array:
    # Shard d's block of rows indexes shard d only: a batched gather that the partitioner keeps local.
    local = jax.vmap(lambda shard, r: shard[r])(a.reshape(shards, -1, *a.shape[1:]), rows.reshape(shards, -1))
    return local.reshape(-1, *a.shape[1:])

  batch = jax.tree.map(gather, tree)
  return batch if mesh is None else jax.lax.with_sharding_constraint(batch, sharding(mesh, DATA_AXIS))


def per_device(fn: Callable[[Any, jax.Array], jax.Array], mesh: Mesh | None) -> Callable[[Any, jax.Array], jax.Array]:
  """``fn(params, x) -> y`` run by every device on its own rows of ``x (B, ...)``, ``params`` replicated."""
  if num_shards(mesh) == 1:  # as before data parallelism: shard_map would move float32 rounding
    return fn
  # XLA's partitioner cannot split every kernel along the batch (it all-gathers the batch around
  # an FFT, and cannot split a Pallas call): here each device runs the model as if it were alone.
  # The transpose of shard_map sums the replicated parameters' gradients over the devices.
  # check_vma=False: the kernels' custom VJPs give per-device cotangents for replicated inputs.
  spec = PartitionSpec(DATA_AXIS)
  return jax.shard_map(fn, mesh=mesh, in_specs=(PartitionSpec(), spec), out_specs=spec, check_vma=False)
