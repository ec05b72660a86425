// Layer/RMS norm forward and backward for XLA:CPU, as XLA FFI handlers (loaded by rnlib.kernels.native).
//
// Why: XLA:CPU makes several memory passes over a norm; here each row is read once, kept in L1 while its
// statistics and outputs are computed, and written once; rows are split over XLA's intra-op thread pool.
// Maths and saved-statistics convention: exactly rnlib/ops/_norm_math.py (float32 statistics, two-pass
// variance, layer-norm rows shifted by their first element, `mean` = mean of the shifted row).
//
// Determinism: every sum has a fixed order that depends only on the shape (see norm_rows.h; dscale/dbias
// from fixed row blocks reduced in block order), never on the thread count, the thread that ran a task,
// or the instruction set picked at run time.
//
// Arrays may have leading (vmap) batch dimensions: x (..., R, W), params (..., W) or (W,), statistics
// (..., R); dscale/dbias are reduced over R only, per batch entry.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using DT = ffi::DataType;

bool supported(DT t) { return t == DT::F32 || t == DT::BF16 || t == DT::F16; }

struct Shape { int64_t batch = 1, rows = 0, width = 0; };  // rows per batch entry

// Parameters (scale/bias) as float32, (batch or 1, W); converted once per call when not float32.
struct Param {
  const float* p = nullptr;
  int64_t stride = 0;  // 0: shared by all batch entries, W: one row per batch entry
  std::vector<float> own;
};

struct FwdProblem {  // pointers into the FFI buffers
  Shape sh;
  bool rms = false;
  float eps = 0.f;
  DT xt, rt = DT::F32, ht = DT::F32, yt;
  const void *x, *res = nullptr;
  void *h = nullptr, *y;
  Param scale, bias;
  float *mean, *rstd;
};


struct BwdProblem {
  Shape sh;
  bool rms = false;
  DT dyt, ht, dht = DT::F32, dxt;
  const void *dy, *h, *dh = nullptr;
  void* dx;
  const float *mean, *rstd;
  Param scale;
  bool want_ds = false, want_db = false;
  int64_t block_rows = 1, blocks_per_batch = 1;
  float *part_s = nullptr, *part_b = nullptr;  // (n_blocks, W) partial sums
};

// Large outputs are fresh mmap'ed memory whose 4 KiB first-touch page faults can cost as much as the
// kernel itself; asking for transparent huge pages on the (2 MiB-aligned) inside of the buffer we are about
// to overwrite entirely cuts the number of faults 512-fold. Advisory only: ignored where unsupported.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (getenv("RNLIB_NO_THP")) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

float* row_buffer(int which, int64_t n) {  // per-thread scratch rows (kept between calls)
  thread_local std::vector<float> bufs[4];
  if (int64_t(bufs[which].size()) < n) bufs[which].resize(n);
  return bufs[which].data();
}

namespace portable {
#include "norm_rows.h"
}  // namespace portable

// Function multi-versioning by hand: the row kernels again, compiled for AVX2 and AVX-512 (GCC on x86-64).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RNLIB_X86_VERSIONS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,movbe")
namespace v3 {
#include "norm_rows.h"
}  // namespace v3
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe")
namespace v4 {
#include "norm_rows.h"
}  // namespace v4
#pragma GCC pop_options
// AVX-512 plus AVX512-BF16's float32 -> bfloat16 conversion (round to nearest even, quiet NaN; it treats
// subnormal inputs as zero, which the flush-to-zero arithmetic that produces every stored value never makes).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe")
#define RNLIB_AVX512BF16 1
namespace v4bf16 {
#include "norm_rows.h"
}  // namespace v4bf16
#undef RNLIB_AVX512BF16
#pragma GCC pop_options
#endif

struct RowKernels {
  int level;  // 1 portable (SSE2 on x86-64), 2 x86-64-v3 (AVX2), 3 x86-64-v4 (AVX-512), 4 AVX-512 + BF16
  void (*fwd)(const FwdProblem&, int64_t, int64_t);
  void (*bwd)(const BwdProblem&, int64_t, int64_t);
};

int best_level() {
#ifdef RNLIB_X86_VERSIONS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return __builtin_cpu_supports("avx512bf16") ? 4 : 3;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
      __builtin_cpu_supports("f16c"))
    return 2;
#endif
  return 1;
}

// The kernels for `request` (0: the best this CPU runs; else at most that level).
RowKernels row_kernels(int request) {
  static const int best = best_level();
  const int level = request <= 0 ? best : std::min(request, best);
#ifdef RNLIB_X86_VERSIONS
  if (level == 4) return {4, &v4bf16::fwd_rows, &v4bf16::bwd_blocks};
  if (level == 3) return {3, &v4::fwd_rows, &v4::bwd_blocks};
  if (level == 2) return {2, &v3::fwd_rows, &v3::bwd_blocks};
#endif
  return {1, &portable::fwd_rows, &portable::bwd_blocks};
}

// ---------------------------------------------------------------- threads
// XLA:CPU runs its kernels with subnormals flushed to zero (FTZ/DAZ); so do we, on every thread that runs a
// task, so that results match XLA's and do not depend on the state of whichever thread ran a task.
struct FlushDenormals {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Runs body(0..n_tasks-1) on the calling thread plus helpers from XLA's intra-op pool. Tasks are claimed
// from an atomic counter, and the caller claims too, so it only ever waits for tasks already running
// (no deadlock when the caller is itself a pool thread). Results must not depend on who ran a task.
void parallel_for(ffi::ThreadPool& pool, int64_t n_tasks, const std::function<void(int64_t)>& body) {
  int64_t helpers = n_tasks > 1 ? std::min<int64_t>(pool.num_threads(), n_tasks - 1) : 0;
  if (helpers <= 0) {
    FlushDenormals ftz;
    for (int64_t t = 0; t < n_tasks; ++t) body(t);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t n = 0;
    const std::function<void(int64_t)>* body = nullptr;
    std::mutex m;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  st->n = n_tasks;
  st->body = &body;  // only dereferenced for a claimed task, i.e. before the caller returns
  auto work = [](State& s) {
    FlushDenormals ftz;
    for (;;) {
      const int64_t t = s.next.fetch_add(1);
      if (t >= s.n) return;
      (*s.body)(t);
      if (s.done.fetch_add(1) + 1 == s.n) {
        std::lock_guard<std::mutex> lk(s.m);
        s.cv.notify_all();
      }
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([st, work] { work(*st); });
  work(*st);
  std::unique_lock<std::mutex> lk(st->m);
  st->cv.wait(lk, [&] { return st->done.load() == st->n; });
}


ffi::Error make_param(const ffi::AnyBuffer& buf, int64_t batch, int64_t width, const char* name, Param& out) {
  const int64_t n = int64_t(buf.element_count());
  if (!supported(buf.element_type()))
    return ffi::Error::InvalidArgument(std::string(name) + ": dtype must be float32/bfloat16/float16");
  if (n == width) out.stride = 0;
  else if (n == batch * width) out.stride = width;
  else return ffi::Error::InvalidArgument(std::string(name) + ": element count does not match the width");
  if (buf.element_type() == DT::F32) {
    out.p = static_cast<const float*>(buf.untyped_data());
  } else {
    out.own.resize(n);
    portable::load(buf.element_type(), buf.untyped_data(), 0, out.own.data(), n);
    out.p = out.own.data();
  }
  return ffi::Error::Success();
}

ffi::Error shape_of(const ffi::AnyBuffer& x, Shape& s) {
  auto d = x.dimensions();
  if (d.size() < 2) return ffi::Error::InvalidArgument("expected an array of rank >= 2 (..., rows, width)");
  for (size_t i = 0; i + 2 < d.size(); ++i) s.batch *= d[i];
  s.rows = d[d.size() - 2];
  s.width = d[d.size() - 1];
  return ffi::Error::Success();
}
ffi::Error check_same(const ffi::AnyBuffer& b, int64_t count, const char* name) {
  if (!supported(b.element_type()))
    return ffi::Error::InvalidArgument(std::string(name) + ": dtype must be float32/bfloat16/float16");
  if (int64_t(b.element_count()) != count)
    return ffi::Error::InvalidArgument(std::string(name) + ": element count does not match x");
  return ffi::Error::Success();
}

#define RNLIB_TRY(expr)                           \
  do {                                            \
    ffi::Error e_ = (expr);                       \
    if (e_.failure()) return e_;                  \
  } while (0)

// Operands: x, then in order residual (if has_residual), scale (if has_scale), bias (if has_bias).
// Results: y, h (if has_residual), mean, rstd.
ffi::Error NormFwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::RemainingArgs args, ffi::RemainingRets rets,
                       float epsilon, int32_t isa, int32_t rms, int32_t has_residual, int32_t has_scale,
                       int32_t has_bias) {
  FwdProblem p;
  RNLIB_TRY(shape_of(x, p.sh));
  const int64_t total = p.sh.batch * p.sh.rows * p.sh.width;
  RNLIB_TRY(check_same(x, total, "x"));
  p.rms = rms != 0;
  p.eps = epsilon;
  p.xt = x.element_type();
  p.x = x.untyped_data();
  size_t ai = 0, ri = 0;
  if (args.size() != size_t((has_residual != 0) + (has_scale != 0) + (has_bias != 0)) ||
      rets.size() != size_t(3 + (has_residual != 0)))
    return ffi::Error::InvalidArgument("operand/result count does not match the has_* attributes");
  if (has_residual) {
    auto r = args.get<ffi::AnyBuffer>(ai++);
    if (!r.has_value()) return r.error();
    RNLIB_TRY(check_same(*r, total, "residual"));
    p.rt = r->element_type();
    p.res = r->untyped_data();
  }
  if (has_scale) {
    auto s = args.get<ffi::AnyBuffer>(ai++);
    if (!s.has_value()) return s.error();
    RNLIB_TRY(make_param(*s, p.sh.batch, p.sh.width, "scale", p.scale));
  }
  if (has_bias) {
    auto b = args.get<ffi::AnyBuffer>(ai++);
    if (!b.has_value()) return b.error();
    RNLIB_TRY(make_param(*b, p.sh.batch, p.sh.width, "bias", p.bias));
  }
  auto y = rets.get<ffi::AnyBuffer>(ri++);
  if (!y.has_value()) return y.error();
  RNLIB_TRY(check_same(**y, total, "y"));
  p.yt = (*y)->element_type();
  p.y = (*y)->untyped_data();
  advise_huge_pages(p.y, (*y)->size_bytes());
  if (has_residual) {
    auto h = rets.get<ffi::AnyBuffer>(ri++);
    if (!h.has_value()) return h.error();
    RNLIB_TRY(check_same(**h, total, "h"));
    p.ht = (*h)->element_type();
    p.h = (*h)->untyped_data();
    advise_huge_pages(p.h, (*h)->size_bytes());
  }
  float* stats[2];
  for (int k = 0; k < 2; ++k) {
    auto st = rets.get<ffi::AnyBuffer>(ri++);
    if (!st.has_value()) return st.error();
    if ((*st)->element_type() != DT::F32 || int64_t((*st)->element_count()) != p.sh.batch * p.sh.rows)
      return ffi::Error::InvalidArgument("mean/rstd must be float32 with one entry per row");
    stats[k] = static_cast<float*>((*st)->untyped_data());
  }
  p.mean = stats[0];
  p.rstd = stats[1];
  const int64_t n_rows = p.sh.batch * p.sh.rows;
  if (n_rows == 0 || p.sh.width == 0) return ffi::Error::Success();
  const int64_t per_task = std::max<int64_t>(1, 16384 / p.sh.width);
  const int64_t n_tasks = (n_rows + per_task - 1) / per_task;
  const RowKernels k = row_kernels(isa);
  parallel_for(pool, total < 32768 ? 1 : n_tasks, [&](int64_t t) {
    const int64_t r0 = total < 32768 ? 0 : t * per_task;
    const int64_t r1 = total < 32768 ? n_rows : std::min(n_rows, r0 + per_task);
    k.fwd(p, r0, r1);
  });
  return ffi::Error::Success();
}

// Operands: dy, h, mean, rstd, then scale (if has_scale), dh_extra (if has_dh).
// Results: dx, then dscale (if has_scale), dbias (if has_bias), float32 (..., W).
ffi::Error NormBwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer h, ffi::AnyBuffer mean,
                       ffi::AnyBuffer rstd, ffi::RemainingArgs args, ffi::RemainingRets rets, int32_t isa,
                       int32_t rms, int32_t has_scale, int32_t has_bias, int32_t has_dh) {
  BwdProblem p;
  RNLIB_TRY(shape_of(h, p.sh));
  const int64_t B = p.sh.batch, R = p.sh.rows, W = p.sh.width, total = B * R * W;
  RNLIB_TRY(check_same(h, total, "h"));
  RNLIB_TRY(check_same(dy, total, "dy"));
  for (const ffi::AnyBuffer* st : {&mean, &rstd})
    if (st->element_type() != DT::F32 || int64_t(st->element_count()) != B * R)
      return ffi::Error::InvalidArgument("mean/rstd must be float32 with one entry per row");
  if (args.size() != size_t((has_scale != 0) + (has_dh != 0)) ||
      rets.size() != size_t(1 + (has_scale != 0) + (has_bias != 0)))
    return ffi::Error::InvalidArgument("operand/result count does not match the has_* attributes");
  p.rms = rms != 0;
  p.dyt = dy.element_type();
  p.ht = h.element_type();
  p.dy = dy.untyped_data();
  p.h = h.untyped_data();
  p.mean = static_cast<const float*>(mean.untyped_data());
  p.rstd = static_cast<const float*>(rstd.untyped_data());
  size_t ai = 0, ri = 0;
  if (has_scale) {
    auto s = args.get<ffi::AnyBuffer>(ai++);
    if (!s.has_value()) return s.error();
    RNLIB_TRY(make_param(*s, B, W, "scale", p.scale));
  }
  if (has_dh) {
    auto d = args.get<ffi::AnyBuffer>(ai++);
    if (!d.has_value()) return d.error();
    RNLIB_TRY(check_same(*d, total, "dh_extra"));
    p.dht = d->element_type();
    p.dh = d->untyped_data();
  }
  auto dx = rets.get<ffi::AnyBuffer>(ri++);
  if (!dx.has_value()) return dx.error();
  RNLIB_TRY(check_same(**dx, total, "dx"));
  p.dxt = (*dx)->element_type();
  p.dx = (*dx)->untyped_data();
  advise_huge_pages(p.dx, (*dx)->size_bytes());
  float* out[2] = {nullptr, nullptr};  // dscale, dbias
  for (int k = 0; k < 2; ++k) {
    if (!(k == 0 ? has_scale : has_bias)) continue;
    auto o = rets.get<ffi::AnyBuffer>(ri++);
    if (!o.has_value()) return o.error();
    if ((*o)->element_type() != DT::F32 || int64_t((*o)->element_count()) != B * W)
      return ffi::Error::InvalidArgument("dscale/dbias must be float32 of shape (..., width)");
    out[k] = static_cast<float*>((*o)->untyped_data());
  }
  p.want_ds = out[0] != nullptr;
  p.want_db = out[1] != nullptr;
  if (B * W == 0) return ffi::Error::Success();
  if (R == 0) {
    for (float* o : out) if (o) std::fill(o, o + B * W, 0.f);
    return ffi::Error::Success();
  }
  // Fixed row blocks (a function of the shape only): up to 32 rows, at least ~8 blocks when rows are few.
  p.block_rows = std::min<int64_t>(32, std::max<int64_t>(1, (R + 7) / 8));
  p.blocks_per_batch = (R + p.block_rows - 1) / p.block_rows;
  const int64_t n_blocks = B * p.blocks_per_batch;
  std::unique_ptr<float[]> part(
      (p.want_ds || p.want_db) ? new float[size_t(n_blocks * W * (p.want_ds + p.want_db))] : nullptr);
  p.part_s = p.want_ds ? part.get() : nullptr;
  p.part_b = p.want_db ? part.get() + (p.want_ds ? n_blocks * W : 0) : nullptr;
  const int64_t per_task = std::max<int64_t>(1, 65536 / (p.block_rows * W));  // blocks per task
  const int64_t n_tasks = (n_blocks + per_task - 1) / per_task;
  const RowKernels kern = row_kernels(isa);
  parallel_for(pool, total < 32768 ? 1 : n_tasks, [&](int64_t t) {
    const int64_t k0 = total < 32768 ? 0 : t * per_task;
    const int64_t k1 = total < 32768 ? n_blocks : std::min(n_blocks, k0 + per_task);
    kern.bwd(p, k0, k1);
  });
  // dscale/dbias: block partials summed in block order, in double; column chunks run in parallel.
  const int64_t cols_per_task = 1024;
  const int64_t col_tasks = (W + cols_per_task - 1) / cols_per_task;
  parallel_for(pool, n_blocks * W < (1 << 18) ? 1 : B * col_tasks, [&](int64_t t) {
    const bool all = n_blocks * W < (1 << 18);
    for (int64_t bi = all ? 0 : t / col_tasks; bi < (all ? B : t / col_tasks + 1); ++bi) {
      const int64_t j0 = all ? 0 : (t % col_tasks) * cols_per_task;
      const int64_t j1 = all ? W : std::min(W, j0 + cols_per_task);
      std::vector<double> acc(size_t(j1 - j0));
      for (int k = 0; k < 2; ++k) {
        const float* part_k = k == 0 ? p.part_s : p.part_b;
        if (!part_k) continue;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t blk = bi * p.blocks_per_batch; blk < (bi + 1) * p.blocks_per_batch; ++blk) {
          const float* src = part_k + blk * W;
          for (int64_t jj = j0; jj < j1; ++jj) acc[jj - j0] += src[jj];
        }
        for (int64_t jj = j0; jj < j1; ++jj) out[k][bi * W + jj] = float(acc[jj - j0]);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnlibNormFwdCpu, NormFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<float>("epsilon")
                                  .Attr<int32_t>("isa")
                                  .Attr<int32_t>("rms")
                                  .Attr<int32_t>("has_residual")
                                  .Attr<int32_t>("has_scale")
                                  .Attr<int32_t>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnlibNormBwdCpu, NormBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int32_t>("isa")
                                  .Attr<int32_t>("rms")
                                  .Attr<int32_t>("has_scale")
                                  .Attr<int32_t>("has_bias")
                                  .Attr<int32_t>("has_dh"));

// Bumped whenever the handlers' operands or attributes change; the Python wrapper refuses a stale build.
extern "C" int RnlibNormCpuAbiVersion() { return 1; }

// The instruction-set level the handlers use for `request` (0: best available): 1 portable, 2 AVX2, 3 AVX-512,
// 4 AVX-512 with BF16 conversions.
extern "C" int RnlibNormCpuIsa(int request) { return row_kernels(request).level; }
