// oneDNN convolutions (forward, backward-data, backward-weights) as XLA FFI handlers.
//
// Layouts are jaxconv's kernel contract, all row-major and channels-last:
//   x  (*lead, N, *spatial, C_in)         w (*lead, *kernel, C_in / G, C_out)
//   y  (*lead, N, *out_spatial, C_out)
// with 1-3 spatial axes and C_out split into G consecutive blocks of C_out / G (lax's grouping).
// `lead` are the leading axes that jax.ffi's vmap_method="expand_dims" adds: every operand has the
// same number of them, each of size 1 (operand not batched there) or B. A batch that only the
// activation operand carries is folded into N (one primitive call); anything else loops.
//
// Memory descriptors describe XLA's buffers directly through strides (no user-side copies). The
// weights' layout is left to oneDNN (format "any": its fast convolutions want blocked weights)
// and reordered on each call when it differs from the plain one; activations stay channels-last,
// or are blocked too (and reordered per call) where channels-last code is slow (see Build).
// Primitives (and their reorders) are cached per problem: creating one JIT-compiles code.
//
// The bias: forward can add one (y = conv(x, w) + b) and backward-weights can also give its
// gradient (db = dy summed over N and space, oneDNN's diff_bias, computed in the same pass over dy).
// The bias and its gradient are float32 (C_out,) whatever the activations' dtype: jaxconv adds
// biases in the accumulation dtype. These calls take no vmap axes (jaxconv's primitives fold or
// map them before the call).
//
// Narrow float32 input gradients, and kernel gradients from one input channel, run on this
// extension's own direct loops instead (direct_conv.h; the rule is Direct below), and the process
// runs one problem at a time (Execute), a waiting call helping with the running one's chunks (Turn).
//
// Exported C symbols: the five FFI handlers, plus jaxconv_onednn_info / jaxconv_onednn_probe for
// Python (ctypes) to check at trace time that a problem is implementable, with oneDNN's message.

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "direct_conv.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Op : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// One convolution problem, without the vmap axes. Shapes are jaxconv's (channels-last).
struct Problem {
  int64_t op = kForward;
  dnnl::memory::data_type dtype = dnnl::memory::data_type::f32;
  int64_t rank = 0, batch = 0, in_channels = 0, out_channels = 0, groups = 1;
  bool bias = false;  // forward adds a float32 bias; backward-weights also gives its gradient
  // > 0: the primitive is built for (and run with) this many OpenMP threads. oneDNN fixes a
  // primitive's work split, and the size of the team it starts, when it builds it.
  int64_t threads = 0;
  std::vector<int64_t> spatial, kernel, out_spatial, stride, dilation, pad_lo, pad_hi;

  std::vector<int64_t> Key() const {
    std::vector<int64_t> key = {op, static_cast<int64_t>(dtype), rank, batch, in_channels, out_channels, groups, bias, threads};
    for (const auto* v : {&spatial, &kernel, &out_spatial, &stride, &dilation, &pad_lo, &pad_hi}) {
      key.insert(key.end(), v->begin(), v->end());
    }
    return key;
  }
};

using dims = dnnl::memory::dims;

// Channels-last activation (N, *spatial, C) as oneDNN's logical (N, C, *spatial), by strides.
dnnl::memory::desc ActivationDesc(const Problem& p, int64_t channels, const std::vector<int64_t>& spatial) {
  dims shape = {p.batch, channels};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  dims strides(shape.size());
  int64_t step = 1;
  strides[1] = step;
  step *= channels;
  for (int64_t i = p.rank - 1; i >= 0; --i) {
    strides[2 + i] = step;
    step *= spatial[i];
  }
  strides[0] = step;
  return dnnl::memory::desc(shape, p.dtype, strides);
}

// Weights (*kernel, C_in / G, C_out) as oneDNN's logical (G, C_out / G, C_in / G, *kernel), or
// (C_out, C_in, *kernel) without groups, by strides.
dnnl::memory::desc WeightDesc(const Problem& p) {
  const int64_t cin_g = p.in_channels / p.groups, cout = p.out_channels, cout_g = cout / p.groups;
  dims ks(p.rank);
  int64_t step = cin_g * cout;
  for (int64_t i = p.rank - 1; i >= 0; --i) {
    ks[i] = step;
    step *= p.kernel[i];
  }
  dims shape, strides;
  if (p.groups > 1) {
    shape = {p.groups, cout_g, cin_g};
    strides = {cout_g, 1, cout};
  } else {
    shape = {cout, cin_g};
    strides = {1, cout};
  }
  shape.insert(shape.end(), p.kernel.begin(), p.kernel.end());
  strides.insert(strides.end(), ks.begin(), ks.end());
  return dnnl::memory::desc(shape, p.dtype, strides);
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One operand of a primitive: the layout of XLA's buffer, the primitive's, and the reorder between
// them where they differ (user -> primitive for inputs, primitive -> user for the result).
struct Operand {
  int arg = 0;
  dnnl::memory::desc user, inner;
  bool reorder = false;
  dnnl::reorder convert;
};

// A ready-to-run problem: the primitive and its operands a, b (inputs) and out (result), as in Execute.
struct Entry {
  dnnl::primitive conv;
  std::string impl;
  std::array<Operand, 3> operands;  // a, b, out
  int bias_arg = 0;                  // DNNL_ARG_BIAS or DNNL_ARG_DIFF_BIAS with a bias, else 0
  dnnl::memory::desc bias;           // float32 (C_out,)
  size_t scratchpad = 0;             // bytes
};

Operand MakeOperand(int arg, const dnnl::memory::desc& user, const dnnl::memory::desc& inner, bool input) {
  Operand o;
  o.arg = arg;
  o.user = user;
  o.inner = inner;
  o.reorder = inner != user;
  if (o.reorder) {
    dnnl::engine& engine = Engine();
    o.convert = input ? dnnl::reorder(dnnl::reorder::primitive_desc(engine, user, engine, inner))
                      : dnnl::reorder(dnnl::reorder::primitive_desc(engine, inner, engine, user));
  }
  return o;
}

// The primitive of `p`. Weights are always in oneDNN's preferred layout ("any"); activations in
// XLA's channels-last layout, or also "any" (blocked, reordered per call) when `any_activations`.
std::unique_ptr<Entry> Build(const Problem& p, bool any_activations) {
  dnnl::engine& engine = Engine();
  const auto src = ActivationDesc(p, p.in_channels, p.spatial);
  const auto dst = ActivationDesc(p, p.out_channels, p.out_spatial);
  auto any = [&](const dnnl::memory::desc& d) { return dnnl::memory::desc(d.get_dims(), p.dtype, dnnl::memory::format_tag::any); };
  const auto src_any = any_activations ? any(src) : src, dst_any = any_activations ? any(dst) : dst;
  const auto weights = WeightDesc(p), weights_any = any(weights);
  dims stride(p.stride.begin(), p.stride.end()), lo(p.pad_lo.begin(), p.pad_lo.end()), hi(p.pad_hi.begin(), p.pad_hi.end());
  dims dilation(p.rank);
  for (int64_t i = 0; i < p.rank; ++i) dilation[i] = p.dilation[i] - 1;  // oneDNN counts inserted zeros
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  // The scratchpad is ours (per calling thread, see Execute): oneDNN's own ("library" mode) is shared
  // between primitives, and XLA runs independent custom calls concurrently on its threads.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // float32 stays float32: no implicit down-conversion to bf16/tf32 where the CPU has it.
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  const dnnl::memory::desc bias({p.out_channels}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::a);
  const bool forward_bias = p.bias && p.op == kForward;
  auto hint = forward_bias ? dnnl::convolution_forward::primitive_desc(engine, dnnl::prop_kind::forward_training, algo,
                                                                       src_any, weights_any, bias, dst_any, stride,
                                                                       dilation, lo, hi, attr)
                           : dnnl::convolution_forward::primitive_desc(engine, dnnl::prop_kind::forward_training, algo,
                                                                       src_any, weights_any, dst_any, stride, dilation,
                                                                       lo, hi, attr);
  auto entry = std::make_unique<Entry>();
  if (p.bias && p.op == kBackwardData) throw std::invalid_argument("backward-data has no bias");
  if (p.bias) {
    entry->bias_arg = p.op == kForward ? DNNL_ARG_BIAS : DNNL_ARG_DIFF_BIAS;
    entry->bias = bias;
  }
  if (p.op == kForward) {
    entry->conv = dnnl::convolution_forward(hint);
    entry->impl = hint.impl_info_str();
    entry->scratchpad = hint.scratchpad_desc().get_size();
    entry->operands = {MakeOperand(DNNL_ARG_SRC, src, hint.src_desc(), true),
                       MakeOperand(DNNL_ARG_WEIGHTS, weights, hint.weights_desc(), true),
                       MakeOperand(DNNL_ARG_DST, dst, hint.dst_desc(), false)};
  } else if (p.op == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(engine, algo, src_any, weights_any, dst_any, stride, dilation,
                                                              lo, hi, hint, attr);
    entry->conv = dnnl::convolution_backward_data(pd);
    entry->impl = pd.impl_info_str();
    entry->scratchpad = pd.scratchpad_desc().get_size();
    entry->operands = {MakeOperand(DNNL_ARG_DIFF_DST, dst, pd.diff_dst_desc(), true),
                       MakeOperand(DNNL_ARG_WEIGHTS, weights, pd.weights_desc(), true),
                       MakeOperand(DNNL_ARG_DIFF_SRC, src, pd.diff_src_desc(), false)};
  } else {
    auto pd = p.bias ? dnnl::convolution_backward_weights::primitive_desc(engine, algo, src_any, weights_any, bias, dst_any,
                                                                          stride, dilation, lo, hi, hint, attr)
                     : dnnl::convolution_backward_weights::primitive_desc(engine, algo, src_any, weights_any, dst_any,
                                                                          stride, dilation, lo, hi, hint, attr);
    entry->conv = dnnl::convolution_backward_weights(pd);
    entry->impl = pd.impl_info_str();
    entry->scratchpad = pd.scratchpad_desc().get_size();
    entry->operands = {MakeOperand(DNNL_ARG_SRC, src, pd.src_desc(), true),
                       MakeOperand(DNNL_ARG_DIFF_DST, dst, pd.diff_dst_desc(), true),
                       MakeOperand(DNNL_ARG_DIFF_WEIGHTS, weights, pd.diff_weights_desc(), false)};
  }
  return entry;
}

void Run(const Entry& entry, void* a, void* b, void* out, void* bias = nullptr);

// Zero-filled buffers of an entry's user layouts, to time it on.
struct Buffers {
  std::vector<char> data[4];
  explicit Buffers(const Entry& entry) {
    for (int i = 0; i < 3; ++i) data[i].assign(entry.operands[i].user.get_size(), 0);
    data[3].assign(entry.bias.get_size(), 0);
  }
  double Seconds(const Entry& entry) {
    auto start = std::chrono::steady_clock::now();
    Run(entry, data[0].data(), data[1].data(), data[2].data(), entry.bias_arg ? data[3].data() : nullptr);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

// Whether `b` runs faster than `a` by 10%: best of 5 runs each, alternated so that both see the
// same machine load, after one warm-up run each.
bool Faster(const Entry& b, const Entry& a) {
  Buffers buffers(a);
  buffers.Seconds(a), buffers.Seconds(b);
  double best_a = 1e30, best_b = 1e30;
  for (int r = 0; r < 5; ++r) {
    best_a = std::min(best_a, buffers.Seconds(a));
    best_b = std::min(best_b, buffers.Seconds(b));
  }
  return best_b < 0.9 * best_a;
}

// The rule of "auto": channels-last, except backward-data without groups into a channel count that
// is not a multiple of 8 (one AVX2 vector), whose channels-last code vectorises badly: on LeNet's
// conv2 (6 input channels) it ran 2.56 ms channels-last, 1.38 ms blocked plus 0.43 ms of reorders.
// Blocking everything instead cost LeNet's conv1 backward-weights 1.50 -> 4.06 ms.
bool BlockedByRule(const Problem& p) { return p.op == kBackwardData && p.groups == 1 && p.in_channels % 8 != 0; }

// $JAXCONV_ONEDNN_LAYOUT chooses the activations' layout: "channels_last" (as XLA holds them),
// "blocked" (oneDNN's choice, reordered per call), "auto" / unset (BlockedByRule), or "tune": the
// faster of the two, timed once per problem when it is built (reorders included; channels-last
// unless blocked is 10% faster). "tune" can choose differently in another process, and the
// layouts round differently, so it is not the default: a resumed run must repeat the same numbers.
// Reference code (oneDNN's fallback) always loses to the other layout's jit code where there is one.
bool IsReference(const Entry& entry) { return entry.impl.rfind("ref", 0) == 0; }

// The problem with blocked activations, or nullptr where oneDNN cannot block it.
std::unique_ptr<Entry> TryBlocked(const Problem& p) {
  try {
    return Build(p, true);
  } catch (const dnnl::error&) {
    return nullptr;
  }
}

std::unique_ptr<Entry> Build(const Problem& p) {
  const char* env = std::getenv("JAXCONV_ONEDNN_LAYOUT");
  const std::string layout = env == nullptr ? "auto" : env;
  const bool want_blocked = layout == "blocked" || (layout == "auto" && BlockedByRule(p));
  if (want_blocked) {
    auto blocked = TryBlocked(p);
    if (blocked != nullptr && !IsReference(*blocked)) return blocked;
  }
  auto entry = Build(p, false);
  if (want_blocked || layout == "channels_last" || (layout == "auto" && !IsReference(*entry))) return entry;
  auto blocked = TryBlocked(p);
  if (blocked == nullptr) return entry;
  if (IsReference(*entry) != IsReference(*blocked)) return IsReference(*entry) ? std::move(blocked) : std::move(entry);
  return layout == "tune" && Faster(*blocked, *entry) ? std::move(blocked) : std::move(entry);
}

// oneDNN's OpenMP threads: at most `threads` for the lifetime of this object (0 = the runtime's default,
// left alone). OpenMP's thread count is per calling thread and sticks, and XLA calls from its own
// threads, so the cap is set per call and the thread's own count put back when the call ends: a cap
// left behind changed other work later on that thread (a training run's metrics in the last bits).
// Looked up dynamically so that a oneDNN built on another threading runtime still loads.
class ThreadCap {
 public:
  explicit ThreadCap(int64_t threads) {
    using GetFn = int (*)();
    static SetFn set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
    static GetFn get = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
    if (threads <= 0 || set == nullptr || get == nullptr) return;
    set_ = set;
    previous_ = get();
    set(static_cast<int>(threads));
  }
  ~ThreadCap() {
    if (set_ != nullptr) set_(previous_);
  }
  ThreadCap(const ThreadCap&) = delete;
  ThreadCap& operator=(const ThreadCap&) = delete;

 private:
  using SetFn = void (*)(int);
  SetFn set_ = nullptr;
  int previous_ = 0;
};

// The cached entry of a problem, built on first use; throws dnnl::error when oneDNN cannot do it.
const Entry& Lookup(const Problem& p) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, std::unique_ptr<Entry>> cache;
  std::vector<int64_t> key = p.Key();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    const ThreadCap cap(p.threads);
    it = cache.emplace(std::move(key), Build(p)).first;
  }
  return *it->second;
}

// Whether `p` runs on jaxconv's direct loops (direct_conv.h) instead of oneDNN's primitive: on a
// CPU with AVX-512 or with AVX2 and FMA (LoopsForThisCpu), float32 (and the bfloat16 forward
// below), 2-D, stride 1, no dilation, no groups, pads of at most K - 1, and either
//   - backward-data into fewer input channels than a vector's lanes (16 on AVX-512, 8 on AVX2), dx
//     at most kMaxWidth wide. oneDNN vectorizes backward-data over C_in: into LeNet's 6 channels it
//     pads them to 16 on AVX-512 and reorders dy and dx to and from its blocked layout, 0.85-0.9 ms
//     per call where the direct loops take 0.45-0.55; or
//   - forward or backward-weights from one input channel (SingleChannelServes): LeNet's conv1, with
//     its bias or bias gradient. On a 2-core AMD EPYC (Zen 4) in LeNet's training step conv1's
//     forward fell from 0.38 to 0.27 ms and its kernel gradient from 0.41 to 0.27 ms (the step from
//     2.88 to 2.63 ms), where oneDNN fills 6 of a vector's 16 lanes with output channels. The
//     forward also takes bfloat16 operands (read and written as bfloat16, computed in float32);
//     bfloat16 backward-data stays oneDNN's, whose AMX code ran LeNet's conv2 input gradient in
//     0.19-0.21 ms on a 2-core Xeon against the float32 loops' 0.57-0.70.
// On a 2-core AMD EPYC with AVX2 only (Zen 3), one jitted call at batch 128 each, loops against
// oneDNN's AVX2 primitive: LeNet's conv1 forward with its bias 0.52 against 0.80-1.0 ms, its kernel
// and bias gradients 0.58-0.60 against 0.96-1.03, conv2's input gradient 0.64 against 0.78; and
// large_15x15's input gradient into 8 channels, which fill AVX2's 8 lanes, 16.6 on the loops against
// 6.1 for oneDNN (hence the lanes in the rule), cifar_5x5's into 3 channels 6.0 against 14.4.
// $JAXCONV_ONEDNN_DIRECT=0 (read per call) turns the direct loops off.
jaxconv_direct::Shape DirectShape(const Problem& p) {
  return {p.batch,        p.spatial[0], p.spatial[1], p.in_channels, p.kernel[0], p.kernel[1],
          p.out_channels, p.pad_lo[0],  p.pad_lo[1],  p.pad_hi[0],   p.pad_hi[1]};
}

// Whether the switch `name` (read on each call, so that tests can flip it between calls) is "0".
bool TurnedOff(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::string(value) == "0";
}

bool Direct(const Problem& p) {
  const jaxconv_direct::Loops* loops = jaxconv_direct::LoopsForThisCpu();
  if (loops == nullptr || TurnedOff("JAXCONV_ONEDNN_DIRECT")) return false;
  const bool bf16_forward = p.dtype == dnnl::memory::data_type::bf16 && p.op == kForward;
  if ((p.dtype != dnnl::memory::data_type::f32 && !bf16_forward) || p.rank != 2 || p.groups != 1) return false;
  for (int64_t i = 0; i < 2; ++i) {
    if (p.stride[i] != 1 || p.dilation[i] != 1 || p.pad_lo[i] < 0 || p.pad_hi[i] < 0) return false;
    if (p.pad_lo[i] > p.kernel[i] - 1 || p.pad_hi[i] > p.kernel[i] - 1) return false;  // the flipped pads must be >= 0
  }
  if (p.op != kBackwardData) return jaxconv_direct::SingleChannelServes(DirectShape(p));
  return p.in_channels < loops->lanes && p.spatial[1] <= jaxconv_direct::kMaxWidth;
}

// Problems of at most kSplitFlops are split along the batch into one part per thread of the team,
// each run by a single-threaded primitive of its own (built for the part's batch, with one OpenMP
// thread, so that it starts no team) on the calling thread or a pool thread. A small primitive
// gains little from oneDNN's OpenMP team, whose passive workers take 0.1-0.2 ms to wake (see
// SharedJob), while the pool's threads are often awake. In LeNet's training step (batch 128, two
// parts) conv1's forward fell from 0.31 to 0.24 ms, conv2's from 0.40 to 0.25 ms and conv2's kernel
// gradient from 0.35 to 0.24 ms; the step from 3.0-3.26 to 2.76-2.87 ms. Two parts beat four (2.7-2.8
// against 2.9-3.0 ms). Backward-weights parts give partial sums of dw and db, added in part order.
// Only float32 backward-weights is split (16-bit partial sums would round). The ResNet config's
// 462-MFLOP convolutions are not split, its stem, strided and projection convolutions are: its
// epochs ran at 1,925 and 1,994 images/s against 1,897 and 1,982 without the split (alternating).
// $JAXCONV_ONEDNN_SPLIT=0 (read per call) turns it off.
constexpr double kSplitFlops = 256e6;

int64_t Product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t d : v) n *= d;
  return n;
}

bool SplitsBatch(const Problem& p) {
  if (TurnedOff("JAXCONV_ONEDNN_SPLIT")) return false;
  if (p.batch < 2 || (p.op == kBackwardWeights && p.dtype != dnnl::memory::data_type::f32)) return false;
  const double flops = 2.0 * p.batch * Product(p.out_spatial) * p.out_channels * Product(p.kernel) * (p.in_channels / p.groups);
  return flops <= kSplitFlops;
}

// The direct loops run on XLA's intra-op pool (the FFI's ThreadPool), not on an OpenMP team: the
// pool's threads are often still awake from XLA's own work when a call comes, where OpenMP's
// passive workers must be woken (0.1-0.2 ms a call). On LeNet's training step the input gradient of
// conv2 fell from 0.61 to 0.55 ms and conv1's kernel gradient from 0.50 to 0.44 ms (the step 2%
// faster). The calling thread takes chunks too, so the call finishes even when no pool thread is
// free (another custom call may hold one, waiting for its Turn); a helper that starts after
// the last chunk was claimed finds nothing to do, and the job outlives the call for it.
struct SharedJob {
  std::atomic<int64_t> next{0}, finished{0};
  int64_t chunks = 0;
  const jaxconv_direct::Body* body = nullptr;  // read only while some chunk is unfinished

  void Work() {
    for (int64_t chunk = next.fetch_add(1); chunk < chunks; chunk = next.fetch_add(1)) {
      (*body)(chunk);
      finished.fetch_add(1, std::memory_order_release);
    }
  }
};

// Execute runs one problem at a time in the process (see there). A call that finds another running
// does not just block: while the running call has a job of chunks on offer (the direct loops, the
// batch split), the waiting thread takes chunks of it. XLA runs independent custom calls on its pool
// threads at once (conv2's input and kernel gradients in LeNet's bfloat16 step, or in its float32
// step with XLA's default options); a thread blocked on a plain lock was one of the two the running
// call's job was meant to share, so that job ran on its calling thread alone. In that bfloat16 step
// the two gradients took 0.76 ms with a plain lock and 0.52 ms with Turn (from a profile of the
// compiled loop, median of 200 steps); the step 3.39-3.47 ms against 3.15-3.31 (alternating runs).
class Turn {
 public:
  // Returns once this thread holds the turn; meanwhile runs chunks of the holder's published job.
  Turn() {
    State& s = Get();
    std::unique_lock<std::mutex> lock(s.mutex);
    while (s.busy) {
      std::shared_ptr<SharedJob> job = s.job;
      if (job != nullptr && job->next.load() < job->chunks) {
        lock.unlock();
        job->Work();
        lock.lock();
      } else {
        s.changed.wait(lock);
      }
    }
    s.busy = true;
  }
  ~Turn() {
    State& s = Get();
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.busy = false;
      s.job = nullptr;
    }
    s.changed.notify_all();
  }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

  // The holder's job that waiting calls may help with (nullptr: none).
  static void Publish(std::shared_ptr<SharedJob> job) {
    State& s = Get();
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.job = std::move(job);
    }
    s.changed.notify_all();
  }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable changed;
    bool busy = false;
    std::shared_ptr<SharedJob> job;
  };
  static State& Get() {
    static State state;
    return state;
  }
};

// The threads a call may use: the caller and the pool's other threads, at most `threads` (0: no cap).
int64_t TeamSize(ffi::ThreadPool* pool, int64_t threads) {
  const int64_t size = std::max<int64_t>(pool->num_threads(), 1);
  return threads > 0 ? std::min(threads, size) : size;
}

// Chunks on the calling thread, team - 1 of the pool's threads and any call waiting for its Turn.
// Called only by the holder of the Turn.
jaxconv_direct::ParallelFor OnPool(ffi::ThreadPool* pool, int64_t team) {
  return [pool, team](int64_t chunks, const jaxconv_direct::Body& body) {
    auto job = std::make_shared<SharedJob>();
    job->chunks = chunks;
    job->body = &body;
    const int64_t helpers = std::min<int64_t>(team, chunks) - 1;
    for (int64_t h = 0; h < helpers; ++h) pool->Schedule([job] { job->Work(); });
    Turn::Publish(job);
    job->Work();
    while (job->finished.load(std::memory_order_acquire) < chunks) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    Turn::Publish(nullptr);
  };
}

// `p` run as `parts` parts of its batch (see kSplitFlops), on `parallel`'s threads.
void RunSplit(const Problem& p, void* a, void* b, void* out, void* bias, const jaxconv_direct::ParallelFor& parallel,
              int64_t parts) {
  const size_t width = dnnl::memory::data_type_size(p.dtype);
  const size_t x_bytes = width * Product(p.spatial) * p.in_channels, y_bytes = width * Product(p.out_spatial) * p.out_channels;
  const size_t dw_size = Product(p.kernel) * (p.in_channels / p.groups) * p.out_channels, db_size = bias ? p.out_channels : 0;
  std::vector<float> partial(p.op == kBackwardWeights ? parts * (dw_size + db_size) : 0);
  char* ca = static_cast<char*>(a);
  char* cb = static_cast<char*>(b);
  char* cout = static_cast<char*>(out);
  parallel(parts, [&](int64_t part) {
    const int64_t n0 = p.batch * part / parts, n1 = p.batch * (part + 1) / parts;
    Problem sub = p;
    sub.batch = n1 - n0;
    sub.threads = 1;
    const Entry& entry = Lookup(sub);
    const ThreadCap one(1);
    if (p.op == kForward) {
      Run(entry, ca + n0 * x_bytes, b, cout + n0 * y_bytes, bias);
    } else if (p.op == kBackwardData) {
      Run(entry, ca + n0 * y_bytes, b, cout + n0 * x_bytes);
    } else {
      float* dw = partial.data() + part * (dw_size + db_size);
      Run(entry, ca + n0 * x_bytes, cb + n0 * y_bytes, dw, bias ? dw + dw_size : nullptr);
    }
  });
  if (p.op != kBackwardWeights) return;
  const int64_t stride = dw_size + db_size;
  jaxconv_direct::SumInOrder(partial.data(), parts, stride, dw_size, static_cast<float*>(out));
  if (bias) jaxconv_direct::SumInOrder(partial.data() + dw_size, parts, stride, db_size, static_cast<float*>(bias));
}

// Calls run on the direct loops in this process (jaxconv_onednn_direct_calls): what tests check to
// tell which code ran, where the loops and oneDNN's primitive give the same bits.
std::atomic<int64_t> direct_calls{0};

// Runs one problem on raw pointers: a = x (forward, backward-weights) or dy (backward-data);
// b = w (forward, backward-data) or dy (backward-weights); out = y, dx or dw; bias = b (forward) or
// db (backward-weights) with p.bias. `parallel` runs the direct loops' chunks.
// One problem at a time in the process: XLA runs independent custom calls (a convolution's input and
// kernel gradients) on two of its threads at once, and each call brings its own OpenMP team, so that
// four threads shared two cores; in a LeNet training step conv2's two gradients then took 1.1-1.25
// ms each instead of 0.4-0.9 one after the other (the step was 5-10% slower). A call waiting its
// Turn helps with the running call's chunks.
void Execute(const Problem& p, void* a, void* b, void* out, void* bias, const jaxconv_direct::ParallelFor& parallel,
             int64_t team) {
  const Turn turn;
  if (Direct(p)) {
    direct_calls.fetch_add(1, std::memory_order_relaxed);
    const jaxconv_direct::Loops& loops = *jaxconv_direct::LoopsForThisCpu();
    const jaxconv_direct::Shape s = DirectShape(p);
    const auto* fa = static_cast<const float*>(a);
    const auto* fb = static_cast<const float*>(b);
    const auto* fbias = static_cast<const float*>(bias);
    if (p.op == kForward && p.dtype == dnnl::memory::data_type::bf16) {
      using jaxconv_direct::Bf16;
      return loops.single_channel_forward_bf16(s, static_cast<const Bf16*>(a), static_cast<const Bf16*>(b), fbias,
                                               static_cast<Bf16*>(out), parallel);
    }
    if (p.op == kForward) loops.single_channel_forward(s, fa, fb, fbias, static_cast<float*>(out), parallel);
    if (p.op == kBackwardData) loops.backward_data(s, fa, fb, static_cast<float*>(out), parallel);
    if (p.op == kBackwardWeights) {
      loops.single_channel_weights_bias(s, fa, fb, static_cast<float*>(out), static_cast<float*>(bias), parallel);
    }
    return;
  }
  if (team > 1 && SplitsBatch(p)) return RunSplit(p, a, b, out, bias, parallel, std::min(team, p.batch));
  Run(Lookup(p), a, b, out, bias);
}

// Reorders of at most this many bytes run on the calling thread alone: waking the OpenMP team
// (whose workers wait passively, see ThreadCap) costs more than copying them. LeNet's weights
// (0.6 and 9.6 KB) are reordered three times a training step; keeping those reorders on one thread
// took the step from 3.43 to 3.31 ms (2-core Xeon, median of three alternating runs).
constexpr size_t kSmallReorderBytes = 64 * 1024;

bool SmallReorder(const Operand& o) { return o.user.get_size() <= kSmallReorderBytes; }

void Run(const Entry& entry, void* a, void* b, void* out, void* bias) {
  dnnl::engine& engine = Engine();
  dnnl::stream stream(engine);
  void* user[3] = {a, b, out};
  // Operands in another layout than XLA's, and the scratchpad, live in one per-thread buffer reused
  // between calls (one call at a time per thread: no two executions share it).
  thread_local std::vector<char> buffer;
  size_t offsets[4] = {0, 0, 0, 0}, total = 0;
  for (int i = 0; i < 4; ++i) {
    if (i < 3 && !entry.operands[i].reorder) continue;
    offsets[i] = total;
    total += ((i < 3 ? entry.operands[i].inner.get_size() : entry.scratchpad) + 63) / 64 * 64;
  }
  if (buffer.size() < total + 64) buffer.resize(total + 64);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t{63});
  std::unordered_map<int, dnnl::memory> args;
  dnnl::memory memories[3];
  for (int i = 0; i < 3; ++i) {
    const Operand& o = entry.operands[i];
    dnnl::memory mine(o.user, engine, user[i]);
    memories[i] = o.reorder ? dnnl::memory(o.inner, engine, base + offsets[i]) : mine;
    if (o.reorder && i < 2) {
      const ThreadCap cap(SmallReorder(o) ? 1 : 0);
      o.convert.execute(stream, mine, memories[i]);
    }
    args[o.arg] = memories[i];
  }
  if (entry.bias_arg != 0) args[entry.bias_arg] = dnnl::memory(entry.bias, engine, bias);
  if (entry.scratchpad > 0) {
    const dnnl::memory::desc bytes({static_cast<int64_t>(entry.scratchpad)}, dnnl::memory::data_type::u8, dnnl::memory::format_tag::a);
    args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(bytes, engine, base + offsets[3]);
  }
  entry.conv.execute(stream, args);
  const Operand& result = entry.operands[2];
  if (result.reorder) {
    dnnl::memory mine(result.user, engine, out);
    const ThreadCap cap(SmallReorder(result) ? 1 : 0);
    result.convert.execute(stream, memories[2], mine);
  }
  stream.wait();
}

int64_t OutputSize(int64_t n, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t hi) {
  return (n + lo + hi - d * (k - 1) - 1) / s + 1;
}

// The problem of a call from its activation shape (N, *spatial, C_in), weight shape and geometry.
Problem MakeProblem(int64_t op, dnnl::memory::data_type dtype, const int64_t* x_shape, const int64_t* w_shape, int64_t rank,
                    const int64_t* stride, const int64_t* dilation, const int64_t* lo, const int64_t* hi, int64_t groups,
                    bool bias = false) {
  Problem p;
  p.op = op;
  p.bias = bias;
  p.dtype = dtype;
  p.rank = rank;
  p.batch = x_shape[0];
  p.in_channels = x_shape[rank + 1];
  p.out_channels = w_shape[rank + 1];
  p.groups = groups;
  for (int64_t i = 0; i < rank; ++i) {
    p.spatial.push_back(x_shape[1 + i]);
    p.kernel.push_back(w_shape[i]);
    p.stride.push_back(stride[i]);
    p.dilation.push_back(dilation[i]);
    p.pad_lo.push_back(lo[i]);
    p.pad_hi.push_back(hi[i]);
    p.out_spatial.push_back(OutputSize(x_shape[1 + i], w_shape[i], stride[i], dilation[i], lo[i], hi[i]));
  }
  return p;
}

bool DnnlType(ffi::DataType type, dnnl::memory::data_type* out) {
  switch (type) {
    case ffi::DataType::F32: *out = dnnl::memory::data_type::f32; return true;
    case ffi::DataType::BF16: *out = dnnl::memory::data_type::bf16; return true;
    case ffi::DataType::F16: *out = dnnl::memory::data_type::f16; return true;
    default: return false;
  }
}

// One FFI call: operands a, b and result out as in Execute, each with `lead` vmap axes in front.
// `bias`, where given, is the float32 (C_out,) bias (forward) or its gradient (backward-weights).
ffi::Error Call(int64_t op, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer out, ffi::Span<const int64_t> stride,
                ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, int64_t groups,
                int64_t threads, ffi::ThreadPool* pool, ffi::AnyBuffer* bias = nullptr) {
  try {
    const int64_t rank = static_cast<int64_t>(stride.size());
    if (rank < 1 || rank > 3 || dilation.size() != stride.size() || lo.size() != stride.size() || hi.size() != stride.size()) {
      return ffi::Error::InvalidArgument("onednn conv: stride, dilation and pads need one entry per spatial axis (1-3)");
    }
    dnnl::memory::data_type dtype;
    if (!DnnlType(a.element_type(), &dtype) || a.element_type() != b.element_type() || a.element_type() != out.element_type()) {
      return ffi::Error::InvalidArgument("onednn conv: operands must share one dtype of float32, bfloat16, float16");
    }
    auto ad = a.dimensions(), bd = b.dimensions(), od = out.dimensions();
    // Activation-like operands have rank + 2 own axes, weights rank + 2 too; the rest are vmap axes.
    const int64_t lead = static_cast<int64_t>(ad.size()) - (rank + 2);
    if (lead < 0 || static_cast<int64_t>(bd.size()) != lead + rank + 2 || static_cast<int64_t>(od.size()) != lead + rank + 2) {
      return ffi::Error::InvalidArgument("onednn conv: operand ranks do not match the spatial rank");
    }
    // x-shaped and w-shaped views of the three buffers.
    const int64_t* x_dims = op == kBackwardData ? od.begin() + lead : ad.begin() + lead;
    const int64_t* w_dims = op == kBackwardWeights ? od.begin() + lead : bd.begin() + lead;
    int64_t count = 1;
    std::vector<int64_t> sizes(lead);
    for (int64_t i = 0; i < lead; ++i) {
      sizes[i] = od[i];
      count *= od[i];
    }
    // Batch carried by the activation operand alone (x for forward, dy for backward-data): fold it into N.
    bool fold = lead > 0 && op != kBackwardWeights;
    for (int64_t i = 0; i < lead && fold; ++i) fold = bd[i] == 1 && ad[i] == od[i];
    std::vector<int64_t> x_shape(x_dims, x_dims + rank + 2);
    if (fold) {
      x_shape[0] *= count;
      count = 1;
    }
    if (bias != nullptr) {
      auto bias_dims = bias->dimensions();
      if (lead != 0 || bias->element_type() != ffi::DataType::F32 || bias_dims.size() != 1 || bias_dims[0] != w_dims[rank + 1]) {
        return ffi::Error::InvalidArgument("onednn conv: the bias must be float32 (C_out,), without vmap axes");
      }
    }
    Problem p = MakeProblem(op, dtype, x_shape.data(), w_dims, rank, stride.begin(), dilation.begin(), lo.begin(), hi.begin(), groups,
                            bias != nullptr);
    // The result's own shape must be what the geometry gives.
    const int64_t* check = op == kForward ? od.begin() + lead : (op == kBackwardData ? ad.begin() + lead : bd.begin() + lead);
    for (int64_t i = 0; i < rank; ++i) {
      if (check[1 + i] != p.out_spatial[i]) return ffi::Error::InvalidArgument("onednn conv: output shape does not match the geometry");
    }
    const ThreadCap cap(threads);
    const int64_t team = TeamSize(pool, threads);
    const jaxconv_direct::ParallelFor parallel = OnPool(pool, team);
    if (count == 1) {
      Execute(p, a.untyped_data(), b.untyped_data(), out.untyped_data(), bias == nullptr ? nullptr : bias->untyped_data(), parallel, team);
      return ffi::Error::Success();
    }
    // One call per vmap index; an operand of size 1 on a vmap axis is broadcast along it.
    const size_t width = ffi::ByteWidth(a.element_type());
    auto own_bytes = [&](ffi::Span<const int64_t> d) {
      size_t n = width;
      for (size_t i = lead; i < d.size(); ++i) n *= d[i];
      return n;
    };
    const size_t a_bytes = own_bytes(ad), b_bytes = own_bytes(bd), out_bytes = own_bytes(od);
    char* a_ptr = static_cast<char*>(a.untyped_data());
    char* b_ptr = static_cast<char*>(b.untyped_data());
    char* out_ptr = static_cast<char*>(out.untyped_data());
    for (int64_t index = 0; index < count; ++index) {
      // Row-major offsets of this index in a and b, counting only their non-broadcast vmap axes.
      int64_t rest = index, a_off = 0, b_off = 0, a_step = 1, b_step = 1;
      for (int64_t i = lead - 1; i >= 0; --i) {
        const int64_t k = rest % sizes[i];
        rest /= sizes[i];
        if (ad[i] != 1) a_off += k * a_step;
        if (bd[i] != 1) b_off += k * b_step;
        a_step *= ad[i];
        b_step *= bd[i];
      }
      Execute(p, a_ptr + a_off * a_bytes, b_ptr + b_off * b_bytes, out_ptr + index * out_bytes, nullptr, parallel, team);
    }
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
}

}  // namespace

#define JAXCONV_BIND(OP)                           \
  [](ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, ffi::Span<const int64_t> stride, \
     ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, int64_t groups, \
     int64_t threads, ffi::ThreadPool pool) { return Call(OP, a, b, *out, stride, dilation, lo, hi, groups, threads, &pool); }

// The geometry attributes every handler takes after its buffers.
#define JAXCONV_ATTRS(BUFFERS)                     \
  BUFFERS.Attr<ffi::Span<const int64_t>>("stride") \
      .Attr<ffi::Span<const int64_t>>("dilation")  \
      .Attr<ffi::Span<const int64_t>>("pad_lo")    \
      .Attr<ffi::Span<const int64_t>>("pad_hi")    \
      .Attr<int64_t>("groups")                     \
      .Attr<int64_t>("threads")                    \
      .Ctx<ffi::ThreadPool>()

#define JAXCONV_SIGNATURE \
  JAXCONV_ATTRS(ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>())

// Everything else is hidden (-fvisibility=hidden); these are the library's interface.
#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxconv_onednn_forward, JAXCONV_BIND(kForward), JAXCONV_SIGNATURE);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxconv_onednn_backward_data, JAXCONV_BIND(kBackwardData), JAXCONV_SIGNATURE);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxconv_onednn_backward_weights, JAXCONV_BIND(kBackwardWeights), JAXCONV_SIGNATURE);

// With the bias: forward(x, w, b) -> y and backward-weights(x, dy) -> (dw, db).
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    jaxconv_onednn_forward_bias,
    [](ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> out,
       ffi::Span<const int64_t> stride, ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> lo,
       ffi::Span<const int64_t> hi, int64_t groups, int64_t threads,
       ffi::ThreadPool pool) { return Call(kForward, a, b, *out, stride, dilation, lo, hi, groups, threads, &pool, &bias); },
    JAXCONV_ATTRS(ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    jaxconv_onednn_backward_weights_bias,
    [](ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> bias,
       ffi::Span<const int64_t> stride, ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> lo,
       ffi::Span<const int64_t> hi, int64_t groups, int64_t threads, ffi::ThreadPool pool) {
      ffi::AnyBuffer db = *bias;
      return Call(kBackwardWeights, a, b, *out, stride, dilation, lo, hi, groups, threads, &pool, &db);
    },
    JAXCONV_ATTRS(ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()));

// Python-side checks (ctypes). Returned strings live until the next call on the same thread.
namespace {
thread_local std::string message;
}

// "oneDNN <version> (cpu runtime <runtime>); direct loops: <avx512, avx2 or none>", or "error: ..."
// when no CPU engine can be created.
extern "C" const char* jaxconv_onednn_info() {
  try {
    const dnnl_version_t* v = dnnl_version();
    Engine();
    std::ostringstream out;
    const jaxconv_direct::Loops* loops = jaxconv_direct::LoopsForThisCpu();
    out << "oneDNN " << v->major << "." << v->minor << "." << v->patch << " (cpu runtime " << v->cpu_runtime
        << "); direct loops: " << (loops != nullptr ? loops->isa : "none");
    message = out.str();
  } catch (const std::exception& e) {
    message = std::string("error: ") + e.what();
  }
  return message.c_str();
}

namespace {

// The problem that jaxconv_onednn_probe's and jaxconv_onednn_direct's arguments describe. dtype: 0
// float32, 1 bfloat16, 2 float16. Shapes are the unbatched x (N, *spatial, C_in) and w.
Problem CodedProblem(int64_t op, int64_t dtype, int64_t rank, const int64_t* x_shape, const int64_t* w_shape,
                     const int64_t* stride, const int64_t* dilation, const int64_t* lo, const int64_t* hi, int64_t groups,
                     bool bias) {
  static const dnnl::memory::data_type types[] = {dnnl::memory::data_type::f32, dnnl::memory::data_type::bf16,
                                                  dnnl::memory::data_type::f16};
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("unknown dtype code");
  return MakeProblem(op, types[dtype], x_shape, w_shape, rank, stride, dilation, lo, hi, groups, bias);
}

}  // namespace

// Builds (and caches) the primitive of one problem (CodedProblem): nullptr when oneDNN implements
// it, else why not. bias: 1 for forward with a bias or backward-weights with its gradient.
extern "C" const char* jaxconv_onednn_probe(int64_t op, int64_t dtype, int64_t rank, const int64_t* x_shape,
                                            const int64_t* w_shape, const int64_t* stride, const int64_t* dilation,
                                            const int64_t* lo, const int64_t* hi, int64_t groups, int64_t bias) {
  try {
    Lookup(CodedProblem(op, dtype, rank, x_shape, w_shape, stride, dilation, lo, hi, groups, bias != 0));
    return nullptr;
  } catch (const dnnl::error& e) {
    message = std::string("oneDNN has no implementation (") + e.what() + ")";
  } catch (const std::exception& e) {
    message = e.what();
  }
  return message.c_str();
}

// Whether the problem (CodedProblem) runs on the direct loops (Direct): 1 or 0 (also for a problem
// the probe would refuse).
extern "C" int64_t jaxconv_onednn_direct(int64_t op, int64_t dtype, int64_t rank, const int64_t* x_shape,
                                         const int64_t* w_shape, const int64_t* stride, const int64_t* dilation,
                                         const int64_t* lo, const int64_t* hi, int64_t groups) {
  try {
    return Direct(CodedProblem(op, dtype, rank, x_shape, w_shape, stride, dilation, lo, hi, groups, false)) ? 1 : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

// How many calls have run on the direct loops in this process.
extern "C" int64_t jaxconv_onednn_direct_calls() { return direct_calls.load(std::memory_order_relaxed); }

#pragma GCC visibility pop
