// Direct convolution loops for the problems oneDNN computes slowly: the input gradient into few
// channels (vectorized over the output's width), and the forward and kernel gradient of a
// convolution from one input channel (vectorized over the flattened (width, channel) rows of y and
// dy). They are built twice (Loops below): for AVX-512's 32 registers of 16 float32 lanes, and for
// AVX2's 16 registers of 8 lanes with FMA, each with its own register blocking; the extension runs
// the build the CPU has (see Direct in onednn_conv.cc).
//
// oneDNN's convolutions vectorize over a channel axis (16 float32 lanes on AVX-512, 8 on AVX2); its
// backward-data vectorizes over C_in, which a convolution from few channels fills badly: LeNet's
// conv2 (6 -> 16 channels) pads its 6 input channels to 16 on AVX-512 (2.7x the work) and reorders
// dy and dx to and from a blocked layout on each call. These loops put the lanes on the output's
// width instead, in float32, for 2-D problems with stride 1, no dilation and no groups, and an
// output at most kMaxWidth wide. Layouts are jaxconv's (channels-last):
//   x (N, H, W, C), w (KH, KW, C, O), y (N, Ho, Wo, O), Ho = H + pad_top + pad_bottom - KH + 1
//   (and likewise Wo).
//
// Algorithm: Forward copies each batch element's input into a planar (C, H, Wp) buffer whose rows
// carry the horizontal padding as zeros; every output row is then a sum over (c, i, j) of one
// unaligned vector load of input row y + i - pad_top at column j, times each output channel's
// weight (broadcast), into ceil(Wo / L) vector accumulators per output channel (L lanes), for two
// output rows at a time on AVX-512 (each input row is loaded once for both) and one on AVX2, for as
// many output channels as the registers hold; input rows in the vertical padding are skipped. BackwardData is Forward on dy with the kernel flipped in space, C and O swapped, and pads
// K - 1 - pad (so each pad must be at most K - 1).
// Cost: N * Ho * C * O * KH' * KW * ceil(Wo / L) vector multiply-adds, KH' <= KH the kernel rows
// that land on real input rows (the lanes past Wo are wasted), plus copying the input into the
// planar buffers and the output out of the accumulators.
// Error: float32 products summed in float32 in another order than lax's or oneDNN's, so results
// agree with them to about C * KH * KW float32 roundings of the largest partial sums.
// Batch elements are split into chunks of kBatchChunk, run by the caller's ParallelFor.
//
// Single-channel loops (C = 1, square kernels of at most 5 x 5, O < 16), for LeNet's conv1: the
// lanes hold a row's (width, channel) pairs, channels-last, so that y's and dy's rows are used as
// they lie. Every input row is "expanded", each pixel repeated O times, so that lane t of an output
// row chunk (pixel t / O, channel t % O) meets its input pixel under kernel column j at lane
// t + j * O of the expanded row; chunk c's channels repeat with period P = O / gcd(O, L) chunks.
// For each phase k = c % P, on AVX-512 the K x K weight patterns (SingleChannelForward, kSingleRows
// output rows a pass, each expanded chunk loaded once for all of them) or the K x K accumulators
// (SingleChannelWeightsBias: each expanded chunk and dy chunk loaded once for the K x K products of
// an input row) stay in registers, so that loads (as dear as a multiply-add for 64 bytes on Zen 4,
// and dearer across a cache line) stay below one per multiply-add. AVX2's 16 registers hold one
// kernel row's K weight patterns beside the kSingleRows accumulators (each expanded chunk is then
// the memory operand of one multiply-add), or two kernel rows' 2 x K accumulators (K / 2 passes
// over the rows). SingleChannelWeightsBias folds the lanes into channels once at the end, and db
// is the sum of dy's chunks.
// Cost: N * Ho * K' * K * ceil(Wo * O / L) vector multiply-adds each (K' <= K the kernel rows on
// real input rows; the forward also multiplies the padding's zero rows), plus expanding N * H rows
// (one permute per chunk). Error: float32 products summed in float32 in another order than lax's
// or oneDNN's; the kernel gradient sums N * Ho * Wo terms (in per-chunk partial sums, SumInOrder),
// like any float32 kernel gradient.

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

// The widest output row the loops take (4 vectors of 16 lanes, 8 of 8).
constexpr int64_t kMaxWidth = 64;

struct Shape {
  int64_t batch, height, width, in_channels;  // x (N, H, W, C)
  int64_t kernel_h, kernel_w, out_channels;   // w (KH, KW, C, O)
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t out_height() const { return height + pad_top + pad_bottom - kernel_h + 1; }
  int64_t out_width() const { return width + pad_left + pad_right - kernel_w + 1; }
};

// A bfloat16 value: the upper 16 bits of a float32.
struct Bf16 {
  uint16_t bits;
};

// Whether the single-channel loops take `s`: one input channel, a square kernel of at most
// kMaxSingleKernel x kMaxSingleKernel, fewer than kMaxSingleOut output channels.
constexpr int64_t kMaxSingleKernel = 5;
constexpr int64_t kMaxSingleOut = 16;
inline bool SingleChannelServes(const Shape& s) {
  return s.in_channels == 1 && s.kernel_h == s.kernel_w && s.kernel_h <= kMaxSingleKernel && s.out_channels < kMaxSingleOut;
}

// The loops compiled for one vector ISA: direct_conv.cc is built once for AVX-512 (16 float32 lanes,
// 32 registers) and once for AVX2 with FMA (8 lanes, 16 registers), with the register blocking of each.
// Both compute each output element's sum in the same order; the kernel gradient's per-lane partial
// sums differ with the lane count.
struct Loops {
  const char* isa;
  int64_t lanes;  // float32 lanes of a vector

  // y = correlate(x, w): x (N, H, W, C), w (KH, KW, C, O), y (N, Ho, Wo, O).
  void (*forward)(const Shape& s, const float* x, const float* w, float* y, const ParallelFor& parallel);

  // dx (N, H, W, C) from dy (N, Ho, Wo, O) and w (KH, KW, C, O).
  void (*backward_data)(const Shape& s, const float* dy, const float* w, float* dx, const ParallelFor& parallel);

  // y (N, Ho, Wo, O) = correlate(x, w) + b from x (N, H, W, 1), w (KH, KW, 1, O) and, when not null,
  // the float32 b (O,) (SingleChannelServes(s)). The loops compute in float32: the Bf16 overload
  // widens its operands as it reads them (exactly) and rounds y to nearest even as it writes it, as
  // XLA's convert rounds, so it gives the bits of the float32 call on the widened operands, rounded.
  void (*single_channel_forward)(const Shape& s, const float* x, const float* w, const float* b, float* y,
                                 const ParallelFor& parallel);
  void (*single_channel_forward_bf16)(const Shape& s, const Bf16* x, const Bf16* w, const float* b, Bf16* y,
                                      const ParallelFor& parallel);

  // dw (KH, KW, 1, O) and, when not null, db (O,) from x (N, H, W, 1) and dy (N, Ho, Wo, O).
  void (*single_channel_weights_bias)(const Shape& s, const float* x, const float* dy, float* dw, float* db,
                                      const ParallelFor& parallel);
};

namespace avx512 {
extern const Loops kLoops;
}
namespace avx2 {
extern const Loops kLoops;
}

// The loops this CPU runs: AVX-512's, else those for AVX2 with FMA, else null.
const Loops* LoopsForThisCpu();

}  // namespace jaxconv_direct
