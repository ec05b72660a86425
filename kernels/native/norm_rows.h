// Row kernels of norm_cpu.cc. Deliberately no include guard: norm_cpu.cc includes this file several times,
// each time inside its own namespace and `#pragma GCC target` region (SSE2 baseline, AVX2, AVX-512), and
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
constexpr int64_t kAhead = 2048;
inline void prefetch(const void* p, int64_t byte_off) {
  __builtin_prefetch(static_cast<const char*>(p) + byte_off + kAhead);
}

template <class T> void load_row(const void* src, int64_t off, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src) + off;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    prefetch(s, i * int64_t(sizeof(T)));
    for (int k = 0; k < 16; ++k) dst[i + k] = to_f32(s[i + k]);
  }
  for (; i < n; ++i) dst[i] = to_f32(s[i]);
}
template <class T> void add_row(const void* src, int64_t off, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src) + off;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    prefetch(s, i * int64_t(sizeof(T)));
    for (int k = 0; k < 16; ++k) dst[i + k] += to_f32(s[i + k]);
  }
  for (; i < n; ++i) dst[i] += to_f32(s[i]);
}
template <class T> void store_row(const float* src, void* dst, int64_t off, int64_t n) {
  T* d = static_cast<T*>(dst) + off;
  for (int64_t i = 0; i < n; ++i) d[i] = from_f32<T>(src[i]);
}
void load(DT t, const void* src, int64_t off, float* dst, int64_t n) {
  with_type(t, [&](auto tag) { load_row<decltype(tag)>(src, off, dst, n); });
}

// ---------------------------------------------------------------- fixed-order sums
// kLanes independent float lanes (lane k takes the elements i = k mod kLanes) inside blocks of kBlock
// elements, lanes combined pairwise in a fixed order, block totals added in double. GCC vector extensions
// make the lanes explicit (no -ffast-math needed to vectorise).
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

inline float lanes_total(vf v) {  // fixed pairwise order
  float a[kLanes];
  std::memcpy(a, &v, sizeof a);
  for (int s = kLanes / 2; s > 0; s /= 2)
    for (int k = 0; k < s; ++k) a[k] += a[k + s];
  return a[0];
}

// sum(h - c)
inline double sum_shifted(const float* h, float c, int64_t n) {
  double total = 0.0;
  const vf vc = vsplat(c);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    vf acc = {};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
      prefetch(h, i * 4);
      acc += vload(h + i) - vc;
    }
    for (int k = 0; i < b1; ++i, ++k) acc[k] += h[i] - c;
    total += lanes_total(acc);
  }
  return total;
}

// sum(((h - c) - m)^2)
inline double sum_sq_dev(const float* h, float c, float m, int64_t n) {
  double total = 0.0;
  const vf vc = vsplat(c), vm = vsplat(m);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    vf acc = {};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
      const vf d = (vload(h + i) - vc) - vm;
      acc += d * d;
    }
    for (int k = 0; i < b1; ++i, ++k) {
      const float d = (h[i] - c) - m;
      acc[k] += d * d;
    }
    total += lanes_total(acc);
  }
  return total;
}

// ---------------------------------------------------------------- forward
template <class Y>
void write_y(const float* hb, float c, float m, float rstd, const float* s, const float* b, void* y,
             int64_t off, int64_t n) {
  Y* out = static_cast<Y*>(y) + off;
  if (s && b) for (int64_t i = 0; i < n; ++i) out[i] = from_f32<Y>((((hb[i] - c) - m) * rstd) * s[i] + b[i]);
  else if (s) for (int64_t i = 0; i < n; ++i) out[i] = from_f32<Y>((((hb[i] - c) - m) * rstd) * s[i]);
  else if (b) for (int64_t i = 0; i < n; ++i) out[i] = from_f32<Y>(((hb[i] - c) - m) * rstd + b[i]);
  else for (int64_t i = 0; i < n; ++i) out[i] = from_f32<Y>(((hb[i] - c) - m) * rstd);
}

// Rows [r0, r1) (of all batch entries): y, h, mean, rstd.
void fwd_rows(const FwdProblem& p, int64_t r0, int64_t r1) {
  const int64_t W = p.sh.width;
  float* buf = row_buffer(0, W);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * W, bi = r / p.sh.rows;
    const float* hb = buf;
    if (p.res) {  // h = round_to_h_dtype(x + residual); the statistics are over the rounded h
      load(p.xt, p.x, off, buf, W);
      with_type(p.rt, [&](auto tag) { add_row<decltype(tag)>(p.res, off, buf, W); });
      with_type(p.ht, [&](auto tag) { store_row<decltype(tag)>(buf, p.h, off, W); });
      if (p.ht != DT::F32) load(p.ht, p.h, off, buf, W);
    } else if (p.xt == DT::F32) {
      hb = static_cast<const float*>(p.x) + off;
    } else {
      load(p.xt, p.x, off, buf, W);
    }
    const float c = p.rms ? 0.f : hb[0];
    const float m = p.rms ? 0.f : float(sum_shifted(hb, c, W) / double(W));
    float var = float(sum_sq_dev(hb, c, m, W) / double(W));
    if (var < 0.f) var = 0.f;  // (NaN passes through)
    const float rstd = 1.0f / std::sqrt(var + p.eps);
    p.mean[r] = m;
    p.rstd[r] = rstd;
    const float* s = p.scale.p ? p.scale.p + bi * p.scale.stride : nullptr;
    const float* b = p.bias.p ? p.bias.p + bi * p.bias.stride : nullptr;
    with_type(p.yt, [&](auto tag) { write_y<decltype(tag)>(hb, c, m, rstd, s, b, p.y, off, W); });
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
    const int64_t b1 = std::min(n, b0 + kBlock);
    vf a1 = {}, a2 = {};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
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
    }
    for (int k = 0; i < b1; ++i, ++k) {
      const float xv = ((to_f32(h[i]) - c) - m) * rstd;
      const float d = dy[i];
      const float gv = S ? d * s[i] : d;
      xh[i] = xv;
      g[i] = gv;
      a1[k] += gv * xv;
      a2[k] += gv;
      if (PS) ps[i] += d * xv;
      if (PB) pb[i] += d;
    }
    sum_gx += lanes_total(a1);
    sum_g += lanes_total(a2);
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

template <class DX>
void write_dx(const float* g, const float* xh, float rstd, float c1, float c2, const float* dh, void* dx,
              int64_t off, int64_t n) {
  DX* out = static_cast<DX*>(dx) + off;
  if (dh) for (int64_t i = 0; i < n; ++i) out[i] = from_f32<DX>(rstd * ((g[i] - xh[i] * c1) - c2) + dh[i]);
  else for (int64_t i = 0; i < n; ++i) out[i] = from_f32<DX>(rstd * ((g[i] - xh[i] * c1) - c2));
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
    with_type(p.dxt, [&](auto tag) { write_dx<decltype(tag)>(g, xh, rstd, c1, c2, dh, p.dx, off, W); });
  }
}

void bwd_blocks(const BwdProblem& p, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) bwd_block(p, k);
}
