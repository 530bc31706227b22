// Direct convolution loops for the gradients oneDNN computes slowly: the input gradient into few
// channels (vectorized over the output's width), and the kernel gradient of a convolution from one
// input channel (vectorized over dy's flattened (width, channel) rows).
//
// oneDNN's convolutions vectorize over a channel axis (16 float32 lanes on AVX-512); its
// backward-data vectorizes over C_in, which a convolution from few channels fills badly: LeNet's
// conv2 (6 -> 16 channels) pads its 6 input channels to 16 (2.7x the work) and reorders dy and dx
// to and from a blocked layout on each call. These loops put the lanes on the output's width
// instead, in float32, for 2-D problems with stride 1, no dilation and no groups, and an output
// at most kMaxWidth wide. Layouts are jaxconv's (channels-last):
//   x (N, H, W, C), w (KH, KW, C, O), y (N, Ho, Wo, O), Ho = H + pad_top + pad_bottom - KH + 1
//   (and likewise Wo).
//
// Algorithm: Forward copies each batch element's input into a planar (C, H, Wp) buffer whose rows
// carry the horizontal padding as zeros; every output row is then a sum over (c, i, j) of one
// unaligned vector load of input row y + i - pad_top at column j, times each output channel's
// weight (broadcast), into ceil(Wo / 16) vector accumulators per output channel, for two output
// rows at a time (each input row is loaded once for both); input rows in the vertical padding are
// skipped. BackwardData is Forward on dy with the kernel flipped in space, C and O swapped, and pads
// K - 1 - pad (so each pad must be at most K - 1).
// Cost: N * Ho * C * O * KH' * KW * ceil(Wo / 16) vector multiply-adds, KH' <= KH the kernel rows
// that land on real input rows (the lanes past Wo are wasted), plus copying the input into the
// planar buffers and the output out of the accumulators.
// Error: float32 products summed in float32 in another order than lax's or oneDNN's, so results
// agree with them to about C * KH * KW float32 roundings of the largest partial sums.
// Batch elements are split into chunks of kBatchChunk, run by the caller's ParallelFor.
//
// SingleChannelWeightsBias (C = 1): every input row is "expanded", each pixel repeated O times, so
// that a 16-lane chunk of a dy row (channels-last: pixel t / O, channel t % O at lane t) meets its
// input pixel at the same lanes, shifted by j * O for kernel column j. Per batch element and kernel
// row i, KW x P vector accumulators (P = O / gcd(O, 16) chunks hold a whole number of pixels) sum
// the products over the output rows; the lanes are folded into channels once at the end, and db is
// the sum of dy's chunks. Cost: N * Ho * KH' * KW * ceil(Wo * O / 16) vector multiply-adds, plus
// expanding N * H rows (one permute per chunk). Error: as above, with sums over N * Ho * Wo terms
// (in per-chunk partial sums, SumInOrder), like any float32 kernel gradient.

#pragma once

#include <cstdint>
#include <functional>

namespace jaxconv_direct {

// Runs body(chunk) once for every chunk in [0, chunks), on any threads, and returns when all have
// run. The loops split their work into chunks that write disjoint outputs (or their own partial
// sums, added in chunk order), so the results do not depend on which thread ran which chunk.
using Body = std::function<void(int64_t chunk)>;
using ParallelFor = std::function<void(int64_t chunks, const Body& body)>;

// out[i] = the sum over chunks c of parts[c * stride + i], for i < size, added in chunk order: how
// the loops (and the extension's batch split) combine their per-chunk partial sums.
void SumInOrder(const float* parts, int64_t chunks, int64_t stride, int64_t size, float* out);

// The widest output row the loops take (4 vectors of 16 lanes).
constexpr int64_t kMaxWidth = 64;

struct Shape {
  int64_t batch, height, width, in_channels;  // x (N, H, W, C)
  int64_t kernel_h, kernel_w, out_channels;   // w (KH, KW, C, O)
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t out_height() const { return height + pad_top + pad_bottom - kernel_h + 1; }
  int64_t out_width() const { return width + pad_left + pad_right - kernel_w + 1; }
};

// y = correlate(x, w): x (N, H, W, C), w (KH, KW, C, O), y (N, Ho, Wo, O).
void Forward(const Shape& s, const float* x, const float* w, float* y, const ParallelFor& parallel);

// dx (N, H, W, C) from dy (N, Ho, Wo, O) and w (KH, KW, C, O).
void BackwardData(const Shape& s, const float* dy, const float* w, float* dx, const ParallelFor& parallel);

// Whether SingleChannelWeightsBias takes `s`: one input channel, an output at most kMaxWidth wide,
// and KW x P accumulators (P = C_out / gcd(C_out, 16)) that fit in registers.
bool SingleChannelWeightsServes(const Shape& s);

// dw (KH, KW, 1, O) and, when not null, db (O,) from x (N, H, W, 1) and dy (N, Ho, Wo, O).
void SingleChannelWeightsBias(const Shape& s, const float* x, const float* dy, float* dw, float* db,
                              const ParallelFor& parallel);

}  // namespace jaxconv_direct
