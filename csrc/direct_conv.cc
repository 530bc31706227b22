// Direct convolution vectorized over the output's width (see direct_conv.h for the algorithm).
// This file is compiled twice: on its own for AVX-512 (namespace avx512, 16 lanes), and from
// direct_conv_avx2.cc, with JAXCONV_DIRECT_AVX2 defined, for AVX2 with FMA (namespace avx2, 8 lanes).

#include "direct_conv.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#if defined(JAXCONV_DIRECT_AVX2)
#define JAXCONV_ISA avx2
#define JAXCONV_ISA_NAME "avx2"
#else
#define JAXCONV_ISA avx512
#define JAXCONV_ISA_NAME "avx512"
#endif

namespace jaxconv_direct {
namespace JAXCONV_ISA {
namespace {

#if defined(JAXCONV_DIRECT_AVX2)
// 8 float32 lanes: one AVX2 register (16 of them).
constexpr int64_t kLanes = 8;
constexpr int kRowBlock = 1;  // output rows per pass over the input rows
#else
// 16 float32 lanes: one AVX-512 register (32 of them).
constexpr int64_t kLanes = 16;
constexpr int kRowBlock = 2;  // output rows per pass: twice the accumulators, each input row loaded once
#endif
typedef float Vec __attribute__((vector_size(kLanes * 4)));
typedef int32_t IndexVec __attribute__((vector_size(kLanes * 4)));
constexpr int kMaxOutBlock = 8;  // output channels per pass over the input rows

// Output channels per pass for rows of `vectors` vectors. AVX2: as many as 12 accumulators hold (of
// 16 registers; the input's vectors and a weight beside them). AVX-512: always kMaxOutBlock (its 32
// registers hold LeNet's 2 x 8 one-vector rows; wider rows spill).
#if defined(JAXCONV_DIRECT_AVX2)
int64_t OutBlock(int64_t vectors) { return std::clamp<int64_t>(12 / (kRowBlock * vectors), 1, kMaxOutBlock); }
#else
int64_t OutBlock(int64_t) { return kMaxOutBlock; }
#endif

// Each hot loop is compiled for its build's ISA; the extension calls a build only on a CPU that has
// it (LoopsForThisCpu).
#if defined(__x86_64__) && defined(__GNUC__) && defined(JAXCONV_DIRECT_AVX2)
#define JAXCONV_TARGET __attribute__((target("avx2,fma")))
#elif defined(__x86_64__) && defined(__GNUC__)
#define JAXCONV_TARGET __attribute__((target("avx512f")))
#else
#define JAXCONV_TARGET
#endif

// An unaligned vector load; a macro, so that it expands with the instructions of the function using it.
#define JAXCONV_LOAD(vec, pointer) std::memcpy(&(vec), (pointer), sizeof(Vec))

int64_t Vectors(int64_t width) { return (width + kLanes - 1) / kLanes; }

// Widening and rounding (see Bf16 in direct_conv.h); the float32 overloads copy.
void ToFloats(const float* in, int64_t n, float* out) { std::memcpy(out, in, n * sizeof(float)); }

typedef uint32_t BitsVec __attribute__((vector_size(kLanes * 4)));
typedef uint16_t HalfBitsVec __attribute__((vector_size(kLanes * 2)));

JAXCONV_TARGET void ToFloats(const Bf16* in, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    HalfBitsVec half;
    std::memcpy(&half, in + i, sizeof(half));
    const BitsVec bits = __builtin_convertvector(half, BitsVec) << 16;
    std::memcpy(out + i, &bits, sizeof(bits));
  }
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(in[i].bits) << 16;
    std::memcpy(out + i, &u, sizeof(float));
  }
}

void FromFloats(const float* in, int64_t n, float* out) { std::memcpy(out, in, n * sizeof(float)); }

// A float32's bits (u, one or a vector of them) rounded to bfloat16's, in place: to nearest even; a
// NaN stays a NaN of its sign, made quiet (XLA's convert gives the same bits). By reference, so that
// no vector crosses a call boundary (whose ABI differs between targets).
template <typename U>
void RoundToBf16(U& u) {
  u = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

JAXCONV_TARGET void FromFloats(const float* in, int64_t n, Bf16* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    BitsVec u;
    std::memcpy(&u, in + i, sizeof(u));
    RoundToBf16(u);
    const HalfBitsVec half = __builtin_convertvector(u, HalfBitsVec);
    std::memcpy(out + i, &half, sizeof(half));
  }
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, in + i, sizeof(float));
    RoundToBf16(u);
    out[i].bits = static_cast<uint16_t>(u);
  }
}

// n values of `in` as float32: `in` itself, or widened into `buffer`.
const float* AsFloats(const float* in, int64_t, float*) { return in; }

const float* AsFloats(const Bf16* in, int64_t n, float* buffer) {
  ToFloats(in, n, buffer);
  return buffer;
}

template <typename T>
std::vector<float> Floats(const T* in, int64_t n) {
  std::vector<float> out(n);
  ToFloats(in, n, out.data());
  return out;
}

// The planar buffer's row stride: the padded row, and every vector load past it reads zeros.
int64_t RowStride(const Shape& s) {
  return std::max(s.pad_left + s.width, kLanes * Vectors(s.out_width()) + s.kernel_w - 1);
}

// x[n] (H, W, C) into planar (C, H, stride) at column pad_left; the columns outside stay as they are (zero).
void ToPlanar(const Shape& s, const float* xn, int64_t stride, float* planar) {
  const int64_t h = s.height, w = s.width, c = s.in_channels;
  for (int64_t r = 0; r < h; ++r) {
    for (int64_t col = 0; col < w; ++col) {
      const float* px = xn + (r * w + col) * c;
      for (int64_t k = 0; k < c; ++k) planar[(k * h + r) * stride + s.pad_left + col] = px[k];
    }
  }
}

// Output rows [y0, y0 + rows) and channels [o0, o0 + OB) of one batch element.
template <int OB, int VW>
JAXCONV_TARGET void ForwardRows(const Shape& s, const float* planar, int64_t stride, const float* w, int64_t o0, int64_t y0,
                                int64_t rows, float* yn) {
  const int64_t c_in = s.in_channels, o_all = s.out_channels, kw = s.kernel_w, wo = s.out_width();
  Vec acc[kRowBlock][OB][VW];
  #pragma GCC unroll 16
  for (int q = 0; q < kRowBlock; ++q) {
    #pragma GCC unroll 16
    for (int b = 0; b < OB; ++b) {
      #pragma GCC unroll 16
      for (int v = 0; v < VW; ++v) acc[q][b][v] = Vec{};
    }
  }
  // Input rows that some output row of the block reads, without the zero padding.
  const int64_t r_lo = std::max<int64_t>(0, y0 - s.pad_top);
  const int64_t r_hi = std::min<int64_t>(s.height, y0 + rows - 1 + s.kernel_h - s.pad_top);
  for (int64_t c = 0; c < c_in; ++c) {
    for (int64_t r = r_lo; r < r_hi; ++r) {
      const float* row = planar + (c * s.height + r) * stride;
      const float* taps[kRowBlock];
      bool used[kRowBlock];
      #pragma GCC unroll 16
      for (int q = 0; q < kRowBlock; ++q) {
        const int64_t i = r + s.pad_top - y0 - q;  // the kernel row output row y0 + q reads r with
        used[q] = q < rows && i >= 0 && i < s.kernel_h;
        taps[q] = w + ((used[q] ? i : 0) * kw * c_in + c) * o_all + o0;
      }
      for (int64_t j = 0; j < kw; ++j) {
        Vec xv[VW];
        #pragma GCC unroll 16
        for (int v = 0; v < VW; ++v) JAXCONV_LOAD(xv[v], row + j + kLanes * v);
        #pragma GCC unroll 16
        for (int q = 0; q < kRowBlock; ++q) {
          if (!used[q]) continue;
          const float* wj = taps[q] + j * c_in * o_all;
          #pragma GCC unroll 16
          for (int b = 0; b < OB; ++b) {
            const float weight = wj[b];
            #pragma GCC unroll 16
            for (int v = 0; v < VW; ++v) acc[q][b][v] += xv[v] * weight;
          }
        }
      }
    }
  }
  // Through memory once, so that the accumulators themselves stay in registers.
  alignas(64) float lanes[kRowBlock][OB][VW * kLanes];
  #pragma GCC unroll 16
  for (int q = 0; q < kRowBlock; ++q) {
    #pragma GCC unroll 16
    for (int b = 0; b < OB; ++b) {
      #pragma GCC unroll 16
      for (int v = 0; v < VW; ++v) std::memcpy(&lanes[q][b][v * kLanes], &acc[q][b][v], sizeof(Vec));
    }
  }
  for (int64_t q = 0; q < rows; ++q) {
    float* out = yn + (y0 + q) * wo * o_all + o0;
    for (int64_t col = 0; col < wo; ++col) {
      for (int b = 0; b < OB; ++b) out[col * o_all + b] = lanes[q][b][col];
    }
  }
}

using ForwardFn = void (*)(const Shape&, const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*);

// Rows of at most kMaxWidth floats: up to 4 vectors on AVX-512, 8 on AVX2.
constexpr int kMaxVectors = kMaxWidth / kLanes;

template <int OB, int VW = 1>
ForwardFn ForwardFor(int64_t vectors) {
  if constexpr (VW < kMaxVectors) {
    if (vectors > VW) return ForwardFor<OB, VW + 1>(vectors);
  }
  return ForwardRows<OB, VW>;
}

template <int OB = 1>
ForwardFn ForwardKernel(int64_t out_block, int64_t vectors) {
  if constexpr (OB < kMaxOutBlock) {
    if (out_block > OB) return ForwardKernel<OB + 1>(out_block, vectors);
  }
  return ForwardFor<OB>(vectors);
}

// The single-channel loops (C = 1) put a row's pixels and channels on the lanes: a row of y or dy
// (channels-last, Wo * O floats) is cut into chunks of L lanes (kLanes), lane t being pixel t / O and channel
// t % O, and an input row is "expanded" to match, each pixel repeated O times, so that the input
// pixel of output lane t under kernel column j sits at lane t + j * O of the expanded row. Chunk c's
// channels depend only on its phase k = c % P (P = O / gcd(O, L) chunks hold a whole number of
// pixels). The kernels are unrolled over the K x K taps. AVX-512's 32 registers hold the weights
// (forward) or the accumulators (kernel gradient) of one phase, K * K <= 25 of them; AVX2's 16 hold
// one kernel row's weights (forward) or two kernel rows' accumulators (kernel gradient) at a time.
constexpr int kSingleRows = 7;  // output rows per forward pass (7 accumulators beside the weights)

int64_t Period(int64_t o) { return o / std::gcd(o, kLanes); }

int64_t ChunksOf(int64_t floats) { return (floats + kLanes - 1) / kLanes; }

// The lane layout of a single-channel problem, derived once per call: chunks of y's and dy's rows,
// of the expanded input rows, and the pattern that expands a vector of pixels into each chunk phase.
struct SingleChannelRows {
  int64_t period;           // P: chunks that hold a whole number of pixels
  int64_t row;              // floats of a y or dy row: Wo * O
  int64_t chunks;           // chunks of such a row
  int64_t stride;           // floats of an expanded row: the row's chunks, shifted by up to (K - 1) * O lanes
  int64_t padded;           // floats of ExpandRows' padded input row
  int64_t period_pixels;    // pixels of P chunks: P * L / O (L lanes)
  int64_t first[kMaxSingleOut];    // chunk k of a period starts at its (first[k] = (L k) / O)th pixel
  IndexVec repeat[kMaxSingleOut];  // and its lane l holds the (first[k] + repeat[k][l])th

  explicit SingleChannelRows(const Shape& s) {
    const int64_t o = s.out_channels;
    period = Period(o);
    row = s.out_width() * o;
    chunks = ChunksOf(row);
    const int64_t expanded_chunks = chunks + ChunksOf((s.kernel_w - 1) * o) + 1;
    stride = expanded_chunks * kLanes;
    padded = std::max(s.pad_left + s.width, stride / o) + 2 * kLanes;
    period_pixels = period * kLanes / o;
    for (int64_t k = 0; k < period; ++k) {
      first[k] = (k * kLanes) / o;
      for (int l = 0; l < kLanes; ++l) repeat[k][l] = static_cast<int32_t>((k * kLanes + l) / o - first[k]);
    }
  }
};

// The expanded rows of one batch element: pixels of row r at rows + r * g.stride. `padded` holds
// one input row with its left padding (g.padded floats, zero outside the row).
JAXCONV_TARGET void ExpandRows(const Shape& s, const SingleChannelRows& g, const float* xn, float* padded, float* rows) {
  const int64_t chunks = g.stride / kLanes;
  for (int64_t r = 0; r < s.height; ++r) {
    std::memcpy(padded + s.pad_left, xn + r * s.width, s.width * sizeof(float));
    // Chunk c0 + k starts at pixel (c0 / P) * period_pixels + first[k]: no division per chunk.
    const float* period_start = padded;
    for (int64_t c0 = 0; c0 < chunks; c0 += g.period, period_start += g.period_pixels) {
      for (int64_t k = 0; k < g.period && c0 + k < chunks; ++k) {
        const int64_t c = c0 + k;
        Vec pixels;
        JAXCONV_LOAD(pixels, period_start + g.first[k]);
        const Vec chunk = __builtin_shuffle(pixels, g.repeat[k]);
        std::memcpy(rows + r * g.stride + c * kLanes, &chunk, sizeof(Vec));
      }
    }
  }
}

// dy's Ho rows of `row` floats (one batch element) into `rows`, `stride` floats apart; the sum of
// their chunks of each phase k added to sums[k * L, (k + 1) * L) (db's partial sums).
JAXCONV_TARGET void CopyRows(const float* dyn, int64_t ho, int64_t row, int64_t stride, int64_t chunks, int64_t period,
                             float* rows, float* sums) {
  for (int64_t y = 0; y < ho; ++y) std::memcpy(rows + y * stride, dyn + y * row, row * sizeof(float));
  for (int64_t k = 0; k < period; ++k) {
    Vec sum;
    JAXCONV_LOAD(sum, sums + k * kLanes);
    for (int64_t y = 0; y < ho; ++y) {
      for (int64_t c = k; c < chunks; c += period) {
        Vec d;
        JAXCONV_LOAD(d, rows + y * stride + c * kLanes);
        sum += d;
      }
    }
    std::memcpy(sums + k * kLanes, &sum, sizeof(Vec));
  }
}

// Lane patterns of the P phases: patterns[(tap * P + k) * L + l] = values[tap * o + (L k + l) % o].
std::vector<float> PhasePatterns(const float* values, int64_t taps, int64_t o) {
  const int64_t period = Period(o);
  std::vector<float> patterns(taps * period * kLanes + kLanes);
  for (int64_t tap = 0; tap < taps; ++tap) {
    for (int64_t lane = 0; lane < period * kLanes; ++lane) patterns[tap * period * kLanes + lane] = values[tap * o + lane % o];
  }
  return patterns;
}

// The inverse fold: out[tap * o + m] = the sum of lanes[(tap * P + k) * L + l] over the lanes with
// (L k + l) % o == m, for `taps` taps.
void FoldPhases(const float* lanes, int64_t taps, int64_t o, float* out) {
  const int64_t period = Period(o);
  std::fill(out, out + taps * o, 0.0f);
  for (int64_t tap = 0; tap < taps; ++tap) {
    for (int64_t lane = 0; lane < period * kLanes; ++lane) out[tap * o + lane % o] += lanes[tap * period * kLanes + lane];
  }
}

// Output rows [y0, y0 + kSingleRows) of one batch element: rows[t] is the expanded input row that
// kernel row i of output row y0 + q reads at t = q + i (a zero row in the padding); out rows of
// `out_stride` floats get `chunks` chunks each. Each output chunk is the bias plus the sum over i,
// then j, of expanded chunk (q + i, j) times weight pattern (i, j), whose accumulators, kSingleRows
// of them, are independent enough to hide the multiply-adds' latency. AVX-512: the K x K weight
// patterns of a phase stay in registers, and each expanded chunk is loaded once for all the output
// rows that use it. AVX2: one kernel row's K patterns at a time, each expanded chunk read by one
// multiply-add (as its memory operand); the same sums in the same order, so the same bits.
#if defined(JAXCONV_DIRECT_AVX2)
template <int K>
JAXCONV_TARGET void SingleChannelForwardRows(const float* const* rows, const float* weights, const float* bias, int64_t period,
                                             int64_t o, int64_t chunks, float* out, int64_t out_stride) {
  for (int64_t k = 0; k < period; ++k) {
    for (int64_t c = k; c < chunks; c += period) {
      Vec acc[kSingleRows];
      #pragma GCC unroll 16
      for (int q = 0; q < kSingleRows; ++q) JAXCONV_LOAD(acc[q], bias + k * kLanes);
      #pragma GCC unroll 1  // unrolled, the K x K weights' loads are hoisted together and spill
      for (int i = 0; i < K; ++i) {
        Vec w[K];
        #pragma GCC unroll 16
        for (int j = 0; j < K; ++j) JAXCONV_LOAD(w[j], weights + ((i * K + j) * period + k) * kLanes);
        #pragma GCC unroll 16
        for (int q = 0; q < kSingleRows; ++q) {
          #pragma GCC unroll 16
          for (int j = 0; j < K; ++j) {
            Vec e;
            JAXCONV_LOAD(e, rows[q + i] + c * kLanes + j * o);
            acc[q] += e * w[j];
          }
        }
      }
      #pragma GCC unroll 16
      for (int q = 0; q < kSingleRows; ++q) std::memcpy(out + q * out_stride + c * kLanes, &acc[q], sizeof(Vec));
    }
  }
}
#else
template <int K>
JAXCONV_TARGET void SingleChannelForwardRows(const float* const* rows, const float* weights, const float* bias, int64_t period,
                                             int64_t o, int64_t chunks, float* out, int64_t out_stride) {
  for (int64_t k = 0; k < period; ++k) {
    Vec w[K][K];
    #pragma GCC unroll 16
    for (int i = 0; i < K; ++i) {
      #pragma GCC unroll 16
      for (int j = 0; j < K; ++j) JAXCONV_LOAD(w[i][j], weights + ((i * K + j) * period + k) * kLanes);
    }
    for (int64_t c = k; c < chunks; c += period) {
      Vec acc[kSingleRows];
      #pragma GCC unroll 16
      for (int q = 0; q < kSingleRows; ++q) JAXCONV_LOAD(acc[q], bias + k * kLanes);
      #pragma GCC unroll 16
      for (int t = 0; t < kSingleRows + K - 1; ++t) {
        #pragma GCC unroll 16
        for (int j = 0; j < K; ++j) {
          Vec e;
          JAXCONV_LOAD(e, rows[t] + c * kLanes + j * o);
          #pragma GCC unroll 16
          for (int q = 0; q < kSingleRows; ++q) {
            if (t - q >= 0 && t - q < K) acc[q] += e * w[t - q][j];
          }
        }
      }
      #pragma GCC unroll 16
      for (int q = 0; q < kSingleRows; ++q) std::memcpy(out + q * out_stride + c * kLanes, &acc[q], sizeof(Vec));
    }
  }
}
#endif

// sums[(tap * P + k) * L + l] += the products of one batch element: expanded input row r (of h, at
// expanded + r * stride) times dy row r + pad_top - i for kernel row i (dy_rows + y * stride, zero
// rows outside the output), over `chunks` chunks a row, summed over r, then the chunks of phase k.
// A pass holds the K accumulators of IB kernel rows [i0, i0 + IB) of a phase in registers and loads
// each expanded chunk once for their IB dy chunks: AVX-512 all K x K of them in one pass, AVX2 two
// kernel rows at a time (2 x K accumulators, K / 2 passes).
#if defined(JAXCONV_DIRECT_AVX2)
constexpr int kWeightRowsPerPass = 2;
#else
constexpr int kWeightRowsPerPass = kMaxSingleKernel;
#endif

template <int K, int IB>
JAXCONV_TARGET void SingleChannelWeightsRowBlock(int i0, const float* expanded, const float* dy_rows, int64_t h,
                                                 int64_t stride, int64_t pad_top, int64_t period, int64_t o, int64_t chunks,
                                                 float* sums) {
  for (int64_t k = 0; k < period; ++k) {
    Vec acc[IB][K];
    #pragma GCC unroll 16
    for (int b = 0; b < IB; ++b) {
      #pragma GCC unroll 16
      for (int j = 0; j < K; ++j) acc[b][j] = Vec{};
    }
    for (int64_t r = 0; r < h; ++r) {
      const float* e = expanded + r * stride;
      const float* d = dy_rows + (r + pad_top - i0) * stride;
      for (int64_t c = k; c < chunks; c += period) {
        Vec dv[IB];
        #pragma GCC unroll 16
        for (int b = 0; b < IB; ++b) JAXCONV_LOAD(dv[b], d - b * stride + c * kLanes);
        #pragma GCC unroll 16
        for (int j = 0; j < K; ++j) {
          Vec ev;
          JAXCONV_LOAD(ev, e + c * kLanes + j * o);
          #pragma GCC unroll 16
          for (int b = 0; b < IB; ++b) acc[b][j] += ev * dv[b];
        }
      }
    }
    #pragma GCC unroll 16
    for (int b = 0; b < IB; ++b) {
      #pragma GCC unroll 16
      for (int j = 0; j < K; ++j) {
        float* sum = sums + (((i0 + b) * K + j) * period + k) * kLanes;
        Vec t;
        JAXCONV_LOAD(t, sum);
        t += acc[b][j];
        std::memcpy(sum, &t, sizeof(Vec));
      }
    }
  }
}

template <int K>
void SingleChannelWeightsRows(const float* expanded, const float* dy_rows, int64_t h, int64_t stride, int64_t pad_top,
                              int64_t period, int64_t o, int64_t chunks, float* sums) {
  constexpr int rows = std::min(K, kWeightRowsPerPass);
  int i0 = 0;
  for (; i0 + rows <= K; i0 += rows) {
    SingleChannelWeightsRowBlock<K, rows>(i0, expanded, dy_rows, h, stride, pad_top, period, o, chunks, sums);
  }
  if constexpr (K % rows != 0) {
    SingleChannelWeightsRowBlock<K, K % rows>(i0, expanded, dy_rows, h, stride, pad_top, period, o, chunks, sums);
  }
}

using SingleForwardFn = void (*)(const float* const*, const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t);
using SingleWeightsFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*);

// The forward and kernel-gradient instances for a K x K kernel (1 <= K <= 5).
struct SingleChannelKernels {
  SingleForwardFn forward;
  SingleWeightsFn weights;
};

template <int K>
SingleChannelKernels SingleKernelsOf() {
  return {SingleChannelForwardRows<K>, SingleChannelWeightsRows<K>};
}

SingleChannelKernels SingleKernels(int64_t k) {
  switch (k) {
    case 1: return SingleKernelsOf<1>();
    case 2: return SingleKernelsOf<2>();
    case 3: return SingleKernelsOf<3>();
    case 4: return SingleKernelsOf<4>();
    default: return SingleKernelsOf<5>();
  }
}

// Batch elements per chunk of work: 16 chunks for a batch of 128, so that two threads that start
// apart still share the work evenly.
constexpr int64_t kBatchChunk = 8;

int64_t Chunks(int64_t batch) { return (batch + kBatchChunk - 1) / kBatchChunk; }

// This thread's buffer number `slot` of at least `size` floats; kept between calls (the pool's threads persist).
constexpr int kSlots = 4;

float* Scratch(size_t size, int slot) {
  thread_local std::vector<float> buffers[kSlots];
  if (buffers[slot].size() < size) buffers[slot].resize(size);
  return buffers[slot].data();
}

// The same, its first `size` floats zero.
float* Zeroed(size_t size, int slot = 0) {
  float* buffer = Scratch(size, slot);
  std::fill(buffer, buffer + size, 0.0f);
  return buffer;
}

void Forward(const Shape& s, const float* x, const float* w, float* y, const ParallelFor& parallel) {
  const int64_t ho = s.out_height(), wo = s.out_width(), stride = RowStride(s);
  const int64_t vectors = Vectors(wo), out_block = OutBlock(vectors);
  const size_t planar_size = static_cast<size_t>(s.in_channels * s.height * stride + kLanes);
  parallel(Chunks(s.batch), [&](int64_t chunk) {
    float* planar = Zeroed(planar_size);
    const int64_t n1 = std::min(s.batch, (chunk + 1) * kBatchChunk);
    for (int64_t n = chunk * kBatchChunk; n < n1; ++n) {
      ToPlanar(s, x + n * s.height * s.width * s.in_channels, stride, planar);
      float* yn = y + n * ho * wo * s.out_channels;
      for (int64_t o0 = 0; o0 < s.out_channels; o0 += out_block) {
        const int64_t block = std::min<int64_t>(out_block, s.out_channels - o0);
        const ForwardFn rows = ForwardKernel(block, vectors);
        for (int64_t y0 = 0; y0 < ho; y0 += kRowBlock) {
          rows(s, planar, stride, w, o0, y0, std::min<int64_t>(kRowBlock, ho - y0), yn);
        }
      }
    }
  });
}

void BackwardData(const Shape& s, const float* dy, const float* w, float* dx, const ParallelFor& parallel) {
  // dx = correlate(dy, w flipped in space with C and O swapped), padded by K - 1 - pad.
  const int64_t kh = s.kernel_h, kw = s.kernel_w, c = s.in_channels, o = s.out_channels;
  std::vector<float> flipped(static_cast<size_t>(kh * kw * c * o));
  for (int64_t i = 0; i < kh; ++i) {
    for (int64_t j = 0; j < kw; ++j) {
      for (int64_t k = 0; k < c; ++k) {
        for (int64_t m = 0; m < o; ++m) flipped[((i * kw + j) * o + m) * c + k] = w[(((kh - 1 - i) * kw + kw - 1 - j) * c + k) * o + m];
      }
    }
  }
  const Shape t{s.batch, s.out_height(), s.out_width(), o, kh, kw, c,
                kh - 1 - s.pad_top, kw - 1 - s.pad_left, kh - 1 - s.pad_bottom, kw - 1 - s.pad_right};
  Forward(t, dy, flipped.data(), dx, parallel);
}

template <typename T>
void SingleChannelForward(const Shape& s, const T* x, const T* w, const float* b, T* y, const ParallelFor& parallel) {
  const int64_t o = s.out_channels, k = s.kernel_h, ho = s.out_height(), h = s.height;
  const SingleChannelRows g(s);
  const int64_t out_stride = g.chunks * kLanes;
  const std::vector<float> weights = PhasePatterns(Floats(w, k * k * o).data(), k * k, o);
  const std::vector<float> zero_bias(o, 0.0f);
  const std::vector<float> bias = PhasePatterns(b != nullptr ? b : zero_bias.data(), 1, o);
  const SingleForwardFn pass = SingleKernels(k).forward;
  parallel(Chunks(s.batch), [&](int64_t chunk) {
    float* padded = Zeroed(g.padded, 0);
    float* expanded = Scratch((h + 1) * g.stride, 1);  // ExpandRows writes every chunk of rows [0, h)
    std::fill(expanded + h * g.stride, expanded + (h + 1) * g.stride, 0.0f);  // the padding's rows read row h
    float* out = Scratch(kSingleRows * out_stride, 2);  // each pass writes all its chunks
    float* widened = Scratch(h * s.width, 3);
    const float* zero_row = expanded + h * g.stride;
    const int64_t n1 = std::min(s.batch, (chunk + 1) * kBatchChunk);
    for (int64_t n = chunk * kBatchChunk; n < n1; ++n) {
      ExpandRows(s, g, AsFloats(x + n * h * s.width, h * s.width, widened), padded, expanded);
      for (int64_t y0 = 0; y0 < ho; y0 += kSingleRows) {
        const float* rows[kSingleRows + kMaxSingleKernel - 1];
        for (int64_t t = 0; t < kSingleRows + k - 1; ++t) {
          const int64_t r = y0 + t - s.pad_top;
          rows[t] = r >= 0 && r < h ? expanded + r * g.stride : zero_row;
        }
        pass(rows, weights.data(), bias.data(), g.period, o, g.chunks, out, out_stride);
        for (int64_t q = 0; q < std::min<int64_t>(kSingleRows, ho - y0); ++q) {
          FromFloats(out + q * out_stride, g.row, y + (n * ho + y0 + q) * g.row);
        }
      }
    }
  });
}

void SingleChannelWeightsBias(const Shape& s, const float* x, const float* dy, float* dw, float* db,
                              const ParallelFor& parallel) {
  const int64_t o = s.out_channels, k = s.kernel_h, ho = s.out_height(), h = s.height;
  const SingleChannelRows g(s);
  // dy's rows y from pad_top - K + 1 to h - 1 + pad_top, zero outside [0, Ho) and past each row.
  const int64_t dy_first = s.pad_top - k + 1, dy_rows = std::max(ho, h + s.pad_top) - dy_first;
  const int64_t taps = k * k, count = (taps + 1) * g.period * kLanes;  // dw's taps, then db
  const int64_t batch_chunks = Chunks(s.batch);
  std::vector<float> partial(count * batch_chunks, 0.0f), total(count);
  const SingleWeightsFn pass = SingleKernels(k).weights;
  parallel(batch_chunks, [&](int64_t chunk) {
    float* sums = partial.data() + chunk * count;
    float* padded = Zeroed(g.padded, 0);
    float* expanded = Scratch(h * g.stride, 1);  // ExpandRows writes every chunk of its rows
    float* dy_padded = Zeroed(dy_rows * g.stride, 2);
    float* dy_zero = dy_padded - dy_first * g.stride;  // row 0 of dy
    float* bias_sums = sums + taps * g.period * kLanes;
    const int64_t n1 = std::min(s.batch, (chunk + 1) * kBatchChunk);
    for (int64_t n = chunk * kBatchChunk; n < n1; ++n) {
      ExpandRows(s, g, x + n * h * s.width, padded, expanded);
      CopyRows(dy + n * ho * g.row, ho, g.row, g.stride, g.chunks, g.period, dy_zero, bias_sums);
      pass(expanded, dy_zero, h, g.stride, s.pad_top, g.period, o, g.chunks, sums);
    }
  });
  SumInOrder(partial.data(), batch_chunks, count, count, total.data());
  FoldPhases(total.data(), taps, o, dw);
  if (db != nullptr) FoldPhases(total.data() + taps * g.period * kLanes, 1, o, db);
}

}  // namespace

const Loops kLoops = {
  JAXCONV_ISA_NAME,          kLanes, Forward, BackwardData, SingleChannelForward<float>,
  SingleChannelForward<Bf16>, SingleChannelWeightsBias,
};

}  // namespace JAXCONV_ISA

#if !defined(JAXCONV_DIRECT_AVX2)
const Loops* LoopsForThisCpu() {
  // Asked on every call the extension runs: the CPU is probed once.
  static const Loops* const loops = []() -> const Loops* {
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f")) return &avx512::kLoops;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &avx2::kLoops;
#endif
    return nullptr;
  }();
  return loops;
}

void SumInOrder(const float* parts, int64_t chunks, int64_t stride, int64_t size, float* out) {
  for (int64_t i = 0; i < size; ++i) {
    float sum = parts[i];
    for (int64_t c = 1; c < chunks; ++c) sum += parts[c * stride + i];
    out[i] = sum;
  }
}
#endif

}  // namespace jaxconv_direct
