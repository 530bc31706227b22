// Direct convolution vectorized over the output's width (see direct_conv.h for the algorithm).

#include "direct_conv.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

namespace jaxconv_direct {
namespace {

// 16 float32 lanes: one AVX-512 register, two AVX2 ones, four SSE ones (GCC splits the operations).
typedef float Vec __attribute__((vector_size(64)));
typedef int32_t IndexVec __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;
constexpr int kMaxOutBlock = 8;  // output channels per pass over the input rows
constexpr int kRowBlock = 2;     // output rows per pass: twice the accumulators, each input row loaded once
constexpr int64_t kMaxAccumulators = 28;  // of the 32 AVX-512 registers, for SingleChannelWeights

// Each hot loop is compiled for AVX-512, for AVX with FMA and for the baseline, and the loader picks
// by the CPU's features. (Not "arch=..." clones: their resolver tests the CPU model, and a Sapphire
// Rapids is no "skylake-avx512" to it.)
#if defined(__x86_64__) && defined(__GNUC__)
#define JAXCONV_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define JAXCONV_CLONES
#endif

// An unaligned vector load; a macro, so that each clone expands it with its own instructions.
#define JAXCONV_LOAD(vec, pointer) std::memcpy(&(vec), (pointer), sizeof(Vec))

int64_t Vectors(int64_t width) { return (width + kLanes - 1) / kLanes; }

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
JAXCONV_CLONES void ForwardRows(const Shape& s, const float* planar, int64_t stride, const float* w, int64_t o0, int64_t y0,
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

template <int OB>
ForwardFn ForwardFor(int64_t vectors) {
  switch (vectors) {
    case 1: return ForwardRows<OB, 1>;
    case 2: return ForwardRows<OB, 2>;
    case 3: return ForwardRows<OB, 3>;
    default: return ForwardRows<OB, 4>;
  }
}

ForwardFn ForwardKernel(int64_t out_block, int64_t vectors) {
  switch (out_block) {
    case 1: return ForwardFor<1>(vectors);
    case 2: return ForwardFor<2>(vectors);
    case 3: return ForwardFor<3>(vectors);
    case 4: return ForwardFor<4>(vectors);
    case 5: return ForwardFor<5>(vectors);
    case 6: return ForwardFor<6>(vectors);
    case 7: return ForwardFor<7>(vectors);
    default: return ForwardFor<8>(vectors);
  }
}

// Backward-weights with one input channel, for batch elements [n0, n1): sums[i][j][k] (KH x KW x P
// vectors) and bias_sums[k] (P vectors) accumulate x's rows, each pixel repeated o times ("expanded",
// so that lane t of a dy row chunk, pixel t / o and channel t % o, meets its input pixel) times dy's
// rows. P chunks of 16 lanes hold a whole number of pixels; chunk k's lanes are channels
// (16 k + l) % o.
template <int KW, int P>
JAXCONV_CLONES void SingleChannelWeights(const Shape& s, const float* x, const float* dy, int64_t n0, int64_t n1, float* sums,
                                         float* bias_sums) {
  const int64_t o = s.out_channels, ho = s.out_height(), wo = s.out_width(), h = s.height, w = s.width;
  const int64_t row = wo * o;
  const int64_t groups = (row + P * kLanes - 1) / (P * kLanes), dy_stride = groups * P * kLanes;
  const int64_t e_chunks = groups * P + ((KW - 1) * o + kLanes - 1) / kLanes + 1, e_stride = e_chunks * kLanes;
  // The padded input row, the expanded rows of one batch element, and its dy rows padded with zeros
  // to whole groups; all written before they are read (loads right after overlapping stores stall).
  std::vector<float> padded(std::max(s.pad_left + w, e_stride / o) + 2 * kLanes, 0.0f);
  std::vector<float> expanded(h * e_stride, 0.0f), dy_rows(ho * dy_stride, 0.0f);
  IndexVec repeat[P];  // chunk k of the expanded row from 16 pixels starting at (16 k) / o
  for (int k = 0; k < P; ++k) {
    for (int l = 0; l < kLanes; ++l) repeat[k][l] = static_cast<int32_t>((k * kLanes + l) / o - (k * kLanes) / o);
  }
  Vec bias_acc[P];
  for (int k = 0; k < P; ++k) bias_acc[k] = Vec{};
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t r = 0; r < h; ++r) {
      std::memcpy(padded.data() + s.pad_left, x + (n * h + r) * w, w * sizeof(float));
      for (int64_t c = 0; c < e_chunks; ++c) {
        Vec pixels;
        JAXCONV_LOAD(pixels, padded.data() + (c * kLanes) / o);
        const Vec chunk = __builtin_shuffle(pixels, repeat[c % P]);
        std::memcpy(expanded.data() + r * e_stride + c * kLanes, &chunk, sizeof(Vec));
      }
    }
    for (int64_t y = 0; y < ho; ++y) {
      std::memcpy(dy_rows.data() + y * dy_stride, dy + (n * ho + y) * row, row * sizeof(float));
      for (int64_t g = 0; g < groups; ++g) {
        #pragma GCC unroll 16
        for (int k = 0; k < P; ++k) {
          Vec d;
          JAXCONV_LOAD(d, dy_rows.data() + y * dy_stride + (g * P + k) * kLanes);
          bias_acc[k] += d;
        }
      }
    }
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      Vec acc[KW][P];
      #pragma GCC unroll 16
      for (int j = 0; j < KW; ++j) {
        #pragma GCC unroll 16
        for (int k = 0; k < P; ++k) acc[j][k] = Vec{};
      }
      const int64_t y_lo = std::max<int64_t>(0, s.pad_top - i), y_hi = std::min<int64_t>(ho, h + s.pad_top - i);
      for (int64_t y = y_lo; y < y_hi; ++y) {
        const float* d = dy_rows.data() + y * dy_stride;
        const float* e = expanded.data() + (y + i - s.pad_top) * e_stride;
        for (int64_t g = 0; g < groups; ++g) {
          #pragma GCC unroll 16
          for (int k = 0; k < P; ++k) {
            Vec dv;
            JAXCONV_LOAD(dv, d + (g * P + k) * kLanes);
            #pragma GCC unroll 16
            for (int j = 0; j < KW; ++j) {
              Vec ev;
              JAXCONV_LOAD(ev, e + (g * P + k) * kLanes + j * o);
              acc[j][k] += ev * dv;
            }
          }
        }
      }
      #pragma GCC unroll 16
      for (int j = 0; j < KW; ++j) {
        #pragma GCC unroll 16
        for (int k = 0; k < P; ++k) {
          float* sum = sums + ((i * KW + j) * P + k) * kLanes;
          Vec t;
          JAXCONV_LOAD(t, sum);
          t += acc[j][k];
          std::memcpy(sum, &t, sizeof(Vec));
        }
      }
    }
  }
  for (int k = 0; k < P; ++k) {
    Vec t;
    JAXCONV_LOAD(t, bias_sums + k * kLanes);
    t += bias_acc[k];
    std::memcpy(bias_sums + k * kLanes, &t, sizeof(Vec));
  }
}

using WeightsFn = void (*)(const Shape&, const float*, const float*, int64_t, int64_t, float*, float*);

// Chunks per whole number of pixels: o / gcd(o, 16).
int64_t Period(int64_t o) { return o / std::gcd(o, kLanes); }

template <int P>
WeightsFn WeightsFor(int64_t kw) {
  switch (kw) {
    case 1: return SingleChannelWeights<1, P>;
    case 2: return SingleChannelWeights<2, P>;
    case 3: return SingleChannelWeights<3, P>;
    case 4: return SingleChannelWeights<4, P>;
    case 5: return SingleChannelWeights<5, P>;
    case 6: return SingleChannelWeights<6, P>;
    case 7: return SingleChannelWeights<7, P>;
    default: return nullptr;
  }
}

// The instance for (kw, o), or nullptr where KW x P accumulators would not fit in registers.
WeightsFn WeightsKernel(int64_t kw, int64_t o) {
  const int64_t period = Period(o);
  if (kw * period > kMaxAccumulators) return nullptr;
  switch (period) {
    case 1: return WeightsFor<1>(kw);
    case 3: return WeightsFor<3>(kw);
    case 5: return WeightsFor<5>(kw);
    case 7: return WeightsFor<7>(kw);
    default: return nullptr;
  }
}

// Batch elements per chunk of work: 16 chunks for a batch of 128, so that two threads that start
// apart still share the work evenly.
constexpr int64_t kBatchChunk = 8;

int64_t Chunks(int64_t batch) { return (batch + kBatchChunk - 1) / kBatchChunk; }

// This thread's buffer of `size` floats, all zero; kept between calls (the pool's threads persist).
float* Zeroed(size_t size) {
  thread_local std::vector<float> buffer;
  buffer.assign(size, 0.0f);
  return buffer.data();
}

}  // namespace

void SumInOrder(const float* parts, int64_t chunks, int64_t stride, int64_t size, float* out) {
  for (int64_t i = 0; i < size; ++i) {
    float sum = parts[i];
    for (int64_t c = 1; c < chunks; ++c) sum += parts[c * stride + i];
    out[i] = sum;
  }
}

void Forward(const Shape& s, const float* x, const float* w, float* y, const ParallelFor& parallel) {
  const int64_t ho = s.out_height(), wo = s.out_width(), stride = RowStride(s);
  const int64_t vectors = Vectors(wo);
  const size_t planar_size = static_cast<size_t>(s.in_channels * s.height * stride + kLanes);
  parallel(Chunks(s.batch), [&](int64_t chunk) {
    float* planar = Zeroed(planar_size);
    const int64_t n1 = std::min(s.batch, (chunk + 1) * kBatchChunk);
    for (int64_t n = chunk * kBatchChunk; n < n1; ++n) {
      ToPlanar(s, x + n * s.height * s.width * s.in_channels, stride, planar);
      float* yn = y + n * ho * wo * s.out_channels;
      for (int64_t o0 = 0; o0 < s.out_channels; o0 += kMaxOutBlock) {
        const int64_t block = std::min<int64_t>(kMaxOutBlock, s.out_channels - o0);
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

bool SingleChannelWeightsServes(const Shape& s) {
  return s.in_channels == 1 && s.out_width() <= kMaxWidth && WeightsKernel(s.kernel_w, s.out_channels) != nullptr;
}

void SingleChannelWeightsBias(const Shape& s, const float* x, const float* dy, float* dw, float* db,
                              const ParallelFor& parallel) {
  const int64_t o = s.out_channels, kh = s.kernel_h, kw = s.kernel_w, period = Period(o);
  const WeightsFn pass = WeightsKernel(kw, o);
  const size_t count = static_cast<size_t>((kh * kw + 1) * period * kLanes);
  const int64_t chunks = Chunks(s.batch);
  std::vector<float> partial(count * chunks, 0.0f), total(count);
  parallel(chunks, [&](int64_t chunk) {
    float* sums = partial.data() + chunk * count;
    const int64_t n0 = chunk * kBatchChunk, n1 = std::min(s.batch, n0 + kBatchChunk);
    pass(s, x, dy, n0, n1, sums, sums + kh * kw * period * kLanes);
  });
  SumInOrder(partial.data(), chunks, count, count, total.data());
  // Lane l of chunk k is channel (16 k + l) % o.
  std::fill(dw, dw + kh * kw * o, 0.0f);
  for (int64_t tap = 0; tap < kh * kw; ++tap) {
    for (int64_t lane = 0; lane < period * kLanes; ++lane) dw[tap * o + lane % o] += total[tap * period * kLanes + lane];
  }
  if (db == nullptr) return;
  std::fill(db, db + o, 0.0f);
  for (int64_t lane = 0; lane < period * kLanes; ++lane) db[lane % o] += total[kh * kw * period * kLanes + lane];
}

}  // namespace jaxconv_direct
