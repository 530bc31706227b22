// Direct convolution vectorized over the output's width (see direct_conv.h for the algorithm).

#include "direct_conv.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace jaxconv_direct {
namespace {

// 16 float32 lanes: one AVX-512 register, two AVX2 ones, four SSE ones (GCC splits the operations).
typedef float Vec __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;
constexpr int kMaxOutBlock = 8;  // output channels per pass over the input rows
constexpr int kRowBlock = 2;     // output rows per pass: twice the accumulators, each input row loaded once

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

// This thread's buffer of `size` floats, all zero; kept between calls (OpenMP's threads persist).
float* Zeroed(size_t size) {
  thread_local std::vector<float> buffer;
  buffer.assign(size, 0.0f);
  return buffer.data();
}

}  // namespace

void Forward(const Shape& s, const float* x, const float* w, float* y) {
  const int64_t ho = s.out_height(), wo = s.out_width(), stride = RowStride(s);
  const int64_t vectors = Vectors(wo);
  const size_t planar_size = static_cast<size_t>(s.in_channels * s.height * stride + kLanes);
#pragma omp parallel
  {
    float* planar = Zeroed(planar_size);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.batch; ++n) {
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
  }
}

void BackwardData(const Shape& s, const float* dy, const float* w, float* dx) {
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
  Forward(t, dy, flipped.data(), dx);
}

}  // namespace jaxconv_direct
