"""Kernel benchmarks, outside the library: the named shapes, the comparison harness, its reports.

``experiments/compare_kernels.py`` is the command line over them; tests import the shapes and the
harness from here (``import benchmarks as bench``), run from the repository root.
"""

from benchmarks.harness import (
  auto_choices,
  bench_shape,
  calls_per_sample,
  check,
  compiled_peak_bytes,
  environment,
  forward_fn,
  memory_ratio,
  relative_error,
  run,
  run_once,
  run_sample,
  select_impls,
  summarize,
  time_interleaved,
  torch_fns,
  train_step_fn,
  vjp_fn,
)
from benchmarks.report import markdown, shape_list, summary_table, targets, write
from benchmarks.shapes import SHAPES, SHAPES_BY_NAME, TARGET_SHAPES, Shape, random_inputs, select_shapes

__all__ = [
  "SHAPES",
  "SHAPES_BY_NAME",
  "TARGET_SHAPES",
  "Shape",
  "auto_choices",
  "bench_shape",
  "calls_per_sample",
  "check",
  "compiled_peak_bytes",
  "environment",
  "forward_fn",
  "markdown",
  "memory_ratio",
  "random_inputs",
  "relative_error",
  "run",
  "run_once",
  "run_sample",
  "select_impls",
  "select_shapes",
  "shape_list",
  "summarize",
  "summary_table",
  "targets",
  "time_interleaved",
  "torch_fns",
  "train_step_fn",
  "vjp_fn",
  "write",
]
