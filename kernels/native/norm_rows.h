// Row kernels of norm_cpu.cc. Deliberately no include guard: norm_cpu.cc includes this file several times,
// each time inside its own namespace and `#pragma GCC target` region (SSE2 baseline, AVX2, AVX-512, AVX-512
// with BF16 conversions), and
// picks one copy at run time from the CPU's features. Every copy computes bit-identical results: the
// vector type `vf` fixes the lanes of each sum whatever the instruction set, and -ffp-contract=off keeps
// FMA out.
//
// Needs, declared before inclusion: DT, Shape, Param, FwdProblem, BwdProblem, row_buffer.

// ---------------------------------------------------------------- element types (16-bit as raw bits)
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

inline float f32_of(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t bits_of(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_f32(float v) { return v; }
inline float to_f32(bf16 v) { return f32_of(uint32_t(v.bits) << 16); }
inline float to_f32(f16 v) {  // exact; after F. Giesen's half_to_float
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = uint32_t(v.bits & 0x7fff) << 13;
  const uint32_t exp = shifted_exp & o;
  o += uint32_t(127 - 15) << 23;
  if (exp == shifted_exp) {
    o += uint32_t(128 - 16) << 23;  // Inf/NaN
  } else if (exp == 0) {            // zero/subnormal: renormalise through a float subtraction
    o += 1u << 23;
    o = bits_of(f32_of(o) - f32_of(113u << 23));
  }
  return f32_of(o | (uint32_t(v.bits & 0x8000) << 16));
}

template <class T> T from_f32(float v);
template <> inline float from_f32<float>(float v) { return v; }
template <> inline bf16 from_f32<bf16>(float v) {  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t u = bits_of(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}
template <> inline f16 from_f32<f16>(float v) {  // round to nearest even (F. Giesen's float_to_half_fast3_rtne)
  uint32_t f = bits_of(v);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= (uint32_t(127 + 16) << 23)) {  // overflow to Inf; NaN -> quiet NaN
    o = f > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {         // subnormal or zero: let the FPU round
    const float magic = f32_of(uint32_t((127 - 15) + (23 - 10) + 1) << 23);
    o = uint16_t(bits_of(f32_of(f) + magic) - bits_of(magic));
  } else {
    const uint32_t odd = (f >> 13) & 1u;
    f += (uint32_t(15 - 127) << 23) + 0xfff;
    f += odd;
    o = uint16_t(f >> 13);
  }
  return f16{uint16_t(o | (sign >> 16))};
}

// Calls f(T{}) with T the element type of `t` (float32, bfloat16 or float16; callers validate).
template <class F>
inline void with_type(DT t, F&& f) {
  switch (t) {
    case DT::F32: f(float{}); break;
    case DT::BF16: f(bf16{}); break;
    default: f(f16{}); break;
  }
}

// Rows are contiguous, so prefetching kAhead bytes beyond the current position runs on into the next row:
// the hardware prefetchers stop at 4 KiB page boundaries (a whole row at width 1024 in float32).
constexpr int64_t kAhead = 1024;  // measured at 4096x1024 float32: 512, 2048 and 4096 were slower
inline void prefetch(const void* p, int64_t byte_off) {
  __builtin_prefetch(static_cast<const char*>(p) + byte_off + kAhead);
}


// ---------------------------------------------------------------- fixed-order sums
// Inside blocks of kBlock elements, 4 vector accumulators of kLanes float lanes each (64 independent partial
// sums: enough to hide the add latency even with AVX-512) take the elements in a fixed pattern; they are
// combined in a fixed pairwise order and the block totals added in double. GCC vector extensions make the
// lanes explicit, so the order is the same for every instruction set (and no -ffast-math is needed).
constexpr int kLanes = 16;
constexpr int64_t kBlock = 1024;  // multiple of kLanes
typedef float vf __attribute__((vector_size(4 * kLanes)));

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vsplat(float a) { return vf{} + a; }
typedef uint16_t vh __attribute__((vector_size(2 * kLanes)));
typedef uint32_t vu __attribute__((vector_size(4 * kLanes)));
inline vf vload(const bf16* p) {
  vh b;
  std::memcpy(&b, p, sizeof b);
  const vu u = __builtin_convertvector(b, vu) << 16;
  vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline vf vload(const f16* p) {
  float t[kLanes];
  for (int k = 0; k < kLanes; ++k) t[k] = to_f32(p[k]);
  return vload(t);
}
inline void vstore(bf16* p, vf v) {  // from_f32<bf16> on every lane, in integer vector operations
#ifdef RNLIB_AVX512BF16
  static_assert(sizeof(vf) == sizeof(__m512), "16 float lanes");
  __m512 m;
  std::memcpy(&m, &v, sizeof m);
  const __m256bh b16 = _mm512_cvtneps_pbh(m);
  std::memcpy(p, &b16, sizeof b16);
  return;
#endif
  vu u;
  std::memcpy(&u, &v, sizeof u);
  const vu is_nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu quiet = (u >> 16) | 0x40u;
  const vh b = __builtin_convertvector((quiet & is_nan) | (rounded & ~is_nan), vh);
  std::memcpy(p, &b, sizeof b);
}
inline void vstore(f16* p, vf v) {
  for (int k = 0; k < kLanes; ++k) p[k] = from_f32<f16>(v[k]);
}

inline float lanes_total(vf v) {  // fixed pairwise order
  float a[kLanes];
  std::memcpy(a, &v, sizeof a);
  for (int s = kLanes / 2; s > 0; s /= 2)
    for (int k = 0; k < s; ++k) a[k] += a[k + s];
  return a[0];
}

// Sums over [b0, b1) of two quantities. step(i, acc1, acc2) adds the kLanes elements at i to two vector
// accumulators (and may do other per-element work); tail(i, k, acc1, acc2) adds element i to lane k.
template <class Step, class Tail>
inline void block_sums(int64_t b0, int64_t b1, Step step, Tail tail, float& s1, float& s2) {
  vf p0 = {}, p1 = {}, p2 = {}, p3 = {}, q0 = {}, q1 = {}, q2 = {}, q3 = {};
  int64_t i = b0;
  for (; i + 4 * kLanes <= b1; i += 4 * kLanes) {
    step(i, p0, q0);
    step(i + kLanes, p1, q1);
    step(i + 2 * kLanes, p2, q2);
    step(i + 3 * kLanes, p3, q3);
  }
  if (i + kLanes <= b1) { step(i, p0, q0); i += kLanes; }
  if (i + kLanes <= b1) { step(i, p1, q1); i += kLanes; }
  if (i + kLanes <= b1) { step(i, p2, q2); i += kLanes; }
  for (int k = 0; i < b1; ++i, ++k) tail(i, k, p3, q3);
  s1 = lanes_total((p0 + p1) + (p2 + p3));
  s2 = lanes_total((q0 + q1) + (q2 + q3));
}

// sum(h - c); with COPY, also writes h as float32 to `copy` (the row's first pass, for 16-bit inputs).
template <class T, bool COPY>
inline double sum_shifted(const T* h, float c, int64_t n, float* copy) {
  double total = 0.0;
  const vf vc = vsplat(c);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    float s1, s2;
    block_sums(
        b0, std::min(n, b0 + kBlock),
        [&](int64_t i, vf& a, vf&) {
          prefetch(h, i * int64_t(sizeof(T)));
          const vf v = vload(h + i);
          if (COPY) vstore(copy + i, v);
          a += v - vc;
        },
        [&](int64_t i, int k, vf& a, vf&) {
          const float v = to_f32(h[i]);
          if (COPY) copy[i] = v;
          a[k] += v - c;
        },
        s1, s2);
    total += s1;
  }
  return total;
}

// sum(((h - c) - m)^2)
inline double sum_sq_dev(const float* h, float c, float m, int64_t n) {
  double total = 0.0;
  const vf vc = vsplat(c), vm = vsplat(m);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    float s1, s2;
    block_sums(
        b0, std::min(n, b0 + kBlock),
        [&](int64_t i, vf& a, vf&) {
          const vf d = (vload(h + i) - vc) - vm;
          a += d * d;
        },
        [&](int64_t i, int k, vf& a, vf&) {
          const float d = (h[i] - c) - m;
          a[k] += d * d;
        },
        s1, s2);
    total += s1;
  }
  return total;
}

// ---------------------------------------------------------------- whole rows
template <class T> void load_row(const void* src, int64_t off, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src) + off;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    prefetch(s, i * int64_t(sizeof(T)));
    vstore(dst + i, vload(s + i));
  }
  for (; i < n; ++i) dst[i] = to_f32(s[i]);
}
template <class T> void add_row(const void* src, int64_t off, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src) + off;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    prefetch(s, i * int64_t(sizeof(T)));
    vstore(dst + i, vload(dst + i) + vload(s + i));
  }
  for (; i < n; ++i) dst[i] += to_f32(s[i]);
}
template <class T> void store_row(const float* src, void* dst, int64_t off, int64_t n) {
  T* d = static_cast<T*>(dst) + off;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vstore(d + i, vload(src + i));
  for (; i < n; ++i) d[i] = from_f32<T>(src[i]);
}
void load(DT t, const void* src, int64_t off, float* dst, int64_t n) {
  with_type(t, [&](auto tag) { load_row<decltype(tag)>(src, off, dst, n); });
}

// ---------------------------------------------------------------- forward
// y = (((h - c) - m) * rstd) * scale + bias, stored as Y.
template <class Y, bool S, bool B>
void write_y(const float* hb, float c, float m, float rstd, const float* s, const float* b, Y* out, int64_t n) {
  const vf vc = vsplat(c), vm = vsplat(m), vr = vsplat(rstd);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vf v = ((vload(hb + i) - vc) - vm) * vr;
    if (S) v = v * vload(s + i);
    if (B) v = v + vload(b + i);
    vstore(out + i, v);
  }
  for (; i < n; ++i) {
    float v = ((hb[i] - c) - m) * rstd;
    if (S) v = v * s[i];
    if (B) v = v + b[i];
    out[i] = from_f32<Y>(v);
  }
}

template <class Y>
void write_y_any(const float* hb, float c, float m, float rstd, const float* s, const float* b, void* y,
                 int64_t off, int64_t n) {
  Y* out = static_cast<Y*>(y) + off;
  if (s && b) write_y<Y, true, true>(hb, c, m, rstd, s, b, out, n);
  else if (s) write_y<Y, true, false>(hb, c, m, rstd, s, b, out, n);
  else if (b) write_y<Y, false, true>(hb, c, m, rstd, s, b, out, n);
  else write_y<Y, false, false>(hb, c, m, rstd, s, b, out, n);
}

// Rows [r0, r1) (of all batch entries): y, h, mean, rstd.
void fwd_rows(const FwdProblem& p, int64_t r0, int64_t r1) {
  const int64_t W = p.sh.width;
  float* buf = row_buffer(0, W);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * W, bi = r / p.sh.rows;
    const float* hb = buf;
    bool summed = false;  // sum(h - c) already taken while converting a 16-bit x
    double sum = 0.0;
    if (p.res) {  // h = round_to_h_dtype(x + residual); the statistics are over the rounded h
      load(p.xt, p.x, off, buf, W);
      with_type(p.rt, [&](auto tag) { add_row<decltype(tag)>(p.res, off, buf, W); });
      with_type(p.ht, [&](auto tag) { store_row<decltype(tag)>(buf, p.h, off, W); });
      if (p.ht != DT::F32) load(p.ht, p.h, off, buf, W);
    } else if (p.xt == DT::F32) {
      hb = static_cast<const float*>(p.x) + off;
    } else if (p.rms) {
      load(p.xt, p.x, off, buf, W);
    } else {  // layer norm of a 16-bit x: convert it while summing (one pass fewer over the row)
      with_type(p.xt, [&](auto tag) {
        using T = decltype(tag);
        const T* xr = static_cast<const T*>(p.x) + off;
        sum = sum_shifted<T, true>(xr, to_f32(xr[0]), W, buf);
      });
      summed = true;
    }
    const float c = p.rms ? 0.f : hb[0];
    if (!p.rms && !summed) sum = sum_shifted<float, false>(hb, c, W, nullptr);
    const float m = p.rms ? 0.f : float(sum / double(W));
    float var = float(sum_sq_dev(hb, c, m, W) / double(W));
    if (var < 0.f) var = 0.f;  // (NaN passes through)
    const float rstd = 1.0f / std::sqrt(var + p.eps);
    p.mean[r] = m;
    p.rstd[r] = rstd;
    const float* s = p.scale.p ? p.scale.p + bi * p.scale.stride : nullptr;
    const float* b = p.bias.p ? p.bias.p + bi * p.bias.stride : nullptr;
    with_type(p.yt, [&](auto tag) { write_y_any<decltype(tag)>(hb, c, m, rstd, s, b, p.y, off, W); });
  }
}

// ---------------------------------------------------------------- backward
// Pass 1 over a row: x_hat = ((h - c) - m) * rstd and g = dy * scale (kept for pass 2), the row sums of
// g * x_hat and g, and the dscale/dbias partials of the row's block.
template <class H, bool S, bool PS, bool PB>
void bwd_pass1(const H* h, float c, float m, float rstd, const float* dy, const float* s, float* xh, float* g,
               float* ps, float* pb, int64_t n, double& sum_gx, double& sum_g) {
  const vf vc = vsplat(c), vm = vsplat(m), vr = vsplat(rstd);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    float s1, s2;
    block_sums(
        b0, std::min(n, b0 + kBlock),
        [&](int64_t i, vf& a1, vf& a2) {
          prefetch(h, i * int64_t(sizeof(H)));
          prefetch(dy, i * 4);
          const vf xv = ((vload(h + i) - vc) - vm) * vr;
          const vf d = vload(dy + i);
          const vf gv = S ? d * vload(s + i) : d;
          vstore(xh + i, xv);
          vstore(g + i, gv);
          a1 += gv * xv;
          a2 += gv;
          if (PS) vstore(ps + i, vload(ps + i) + d * xv);
          if (PB) vstore(pb + i, vload(pb + i) + d);
        },
        [&](int64_t i, int k, vf& a1, vf& a2) {
          const float xv = ((to_f32(h[i]) - c) - m) * rstd;
          const float d = dy[i];
          const float gv = S ? d * s[i] : d;
          xh[i] = xv;
          g[i] = gv;
          a1[k] += gv * xv;
          a2[k] += gv;
          if (PS) ps[i] += d * xv;
          if (PB) pb[i] += d;
        },
        s1, s2);
    sum_gx += s1;
    sum_g += s2;
  }
}

template <class H>
void bwd_pass1_any(const void* h, int64_t off, float c, float m, float rstd, const float* dy, const float* s,
                   float* xh, float* g, float* ps, float* pb, int64_t n, double& sum_gx, double& sum_g) {
  const H* hr = static_cast<const H*>(h) + off;
  switch ((s ? 4 : 0) + (ps ? 2 : 0) + (pb ? 1 : 0)) {
#define RNLIB_CASE(K, S_, PS_, PB_) \
  case K: bwd_pass1<H, S_, PS_, PB_>(hr, c, m, rstd, dy, s, xh, g, ps, pb, n, sum_gx, sum_g); break;
    RNLIB_CASE(0, false, false, false) RNLIB_CASE(1, false, false, true)
    RNLIB_CASE(2, false, true, false) RNLIB_CASE(3, false, true, true)
    RNLIB_CASE(4, true, false, false) RNLIB_CASE(5, true, false, true)
    RNLIB_CASE(6, true, true, false) RNLIB_CASE(7, true, true, true)
#undef RNLIB_CASE
  }
}

// dx = rstd * ((g - x_hat * c1) - c2) + dh_extra, stored as DX.
template <class DX, bool DH>
void write_dx(const float* g, const float* xh, float rstd, float c1, float c2, const float* dh, DX* out,
              int64_t n) {
  const vf vr = vsplat(rstd), v1 = vsplat(c1), v2 = vsplat(c2);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vf v = vr * ((vload(g + i) - vload(xh + i) * v1) - v2);
    if (DH) v = v + vload(dh + i);
    vstore(out + i, v);
  }
  for (; i < n; ++i) {
    float v = rstd * ((g[i] - xh[i] * c1) - c2);
    if (DH) v = v + dh[i];
    out[i] = from_f32<DX>(v);
  }
}

template <class DX>
void write_dx_any(const float* g, const float* xh, float rstd, float c1, float c2, const float* dh, void* dx,
                  int64_t off, int64_t n) {
  DX* out = static_cast<DX*>(dx) + off;
  if (dh) write_dx<DX, true>(g, xh, rstd, c1, c2, dh, out, n);
  else write_dx<DX, false>(g, xh, rstd, c1, c2, dh, out, n);
}

// Row block `blk` (block_rows rows of one batch entry): dx, and the block's dscale/dbias partial sums.
void bwd_block(const BwdProblem& p, int64_t blk) {
  const int64_t W = p.sh.width;
  const int64_t bi = blk / p.blocks_per_batch, j = blk % p.blocks_per_batch;
  const int64_t r0 = bi * p.sh.rows + j * p.block_rows;
  const int64_t r1 = std::min(bi * p.sh.rows + p.sh.rows, r0 + p.block_rows);
  float* xh = row_buffer(0, W);
  float* g = row_buffer(1, W);
  float* dyb = row_buffer(2, W);
  float* dhb = row_buffer(3, W);
  float* ps = p.part_s ? p.part_s + blk * W : nullptr;
  float* pb = p.part_b ? p.part_b + blk * W : nullptr;
  if (ps) std::fill(ps, ps + W, 0.f);
  if (pb) std::fill(pb, pb + W, 0.f);
  const float* s = p.scale.p ? p.scale.p + bi * p.scale.stride : nullptr;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * W;
    const float m = p.mean[r], rstd = p.rstd[r];
    const float* dy = dyb;
    if (p.dyt == DT::F32) dy = static_cast<const float*>(p.dy) + off;
    else load(p.dyt, p.dy, off, dyb, W);
    double sum_gx = 0.0, sum_g = 0.0;
    with_type(p.ht, [&](auto tag) {
      using H = decltype(tag);
      const float c = p.rms ? 0.f : to_f32(static_cast<const H*>(p.h)[off]);
      bwd_pass1_any<H>(p.h, off, c, m, rstd, dy, s, xh, g, ps, pb, W, sum_gx, sum_g);
    });
    const float c1 = float(sum_gx / double(W));
    const float c2 = p.rms ? 0.f : float(sum_g / double(W));
    const float* dh = nullptr;
    if (p.dh) {
      if (p.dht == DT::F32) dh = static_cast<const float*>(p.dh) + off;
      else { load(p.dht, p.dh, off, dhb, W); dh = dhb; }
    }
    with_type(p.dxt, [&](auto tag) { write_dx_any<decltype(tag)>(g, xh, rstd, c1, c2, dh, p.dx, off, W); });
  }
}

void bwd_blocks(const BwdProblem& p, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) bwd_block(p, k);
}
