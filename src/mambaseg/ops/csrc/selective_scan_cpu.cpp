// Fused CPU selective scan (Mamba-1 recurrence), forward and backward.
//
// Math per channel d, state n, position t (h_{-1} = 0):
//   dt_t    = softplus(delta_t + bias)  (or delta_t + bias)
//   h_t[n]  = exp(dt_t * A[n]) * h_{t-1}[n] + dt_t * B_t[n] * u_t
//   y_t     = sum_n C_t[n] * h_t[n] + D * u_t
//
// Layout of the work: one task = (batch element, block of W consecutive channels of one B/C group), W = the SIMD
// width. The W channels are the vector lanes; the states of a block of up to 16 state dimensions live in vector
// registers for the whole sequence, so u, delta, B, C are read once per element and y written once. Inputs are
// read in tiles of TL time steps and transposed in registers (time-contiguous rows -> one vector per step).
// Tasks run on torch's intra-op thread pool (at::parallel_for, honours torch.set_num_threads).
//
// Backward recomputes the states: a first forward sweep keeps only the state at the start of every tile, then the
// tiles are visited in reverse, each recomputed from its start state, and the adjoint state is carried backwards.
// Nothing of size (channels x L x N) is ever stored, in either direction.
//
// Written with GCC/Clang vector extensions (portable: AVX-512, AVX2 or NEON code from the same source).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace mambaseg_scan {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

typedef float vf __attribute__((vector_size(kVecBytes)));
typedef float vf_half __attribute__((vector_size(kVecBytes / 2)));
typedef float vf_quarter __attribute__((vector_size(kVecBytes / 4)));
typedef int32_t vi32 __attribute__((vector_size(kVecBytes)));
typedef int32_t vi32_half __attribute__((vector_size(kVecBytes / 2)));
typedef double vd __attribute__((vector_size(kVecBytes)));
typedef double vd_half __attribute__((vector_size(kVecBytes / 2)));
typedef int64_t vi64 __attribute__((vector_size(kVecBytes)));

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  using type = vf;
  using mask = vi32;
  using half = vf_half;
  using quarter = vf_quarter;
  static constexpr int W = kVecBytes / 4;
};

template <>
struct Vec<double> {
  using type = vd;
  using mask = vi64;
  using half = vd_half;
  using quarter = vd_half;  // unused for double: the reduction stops at the half width
  static constexpr int W = kVecBytes / 8;
};

template <typename VT, typename T>
static inline VT splat(T a) {
  return VT{} + a;
}

// ---- math: float versions are vectorised approximations (relative error ~1e-7), double versions call libm per lane

// 2^x: x = k + r with k = round(x), |r| <= 1/2; 2^r by a degree-6 polynomial (p(0) = 1 exactly, fitted for least
// maximum relative error on [-1/2, 1/2]: ~2e-9, ~1e-7 after float32 rounding); 2^k applied with scalef (AVX-512) or
// assembled in the exponent bits. x is clamped below at -125 (results stay normal numbers: no denormal slow paths);
// callers pass x * log2(e) for exp (the kernels scale A by log2(e) once per block).
// 2^r, |r| <= 1/2 (float vectors of any width)
template <class V>
static inline V exp2_poly(V r) {
  V p = splat<V>(1.535336196e-4f);
  p = p * r + 1.339887502e-3f;
  p = p * r + 9.618436918e-3f;
  p = p * r + 5.550332367e-2f;
  p = p * r + 2.402264774e-1f;
  p = p * r + 6.931471825e-1f;
  p = p * r + 1.0f;
  return p;
}

// 2^x without AVX-512: x clamped to [-125, 127], rounded by the magic-number trick, 2^k assembled in the exponent
// bits (VI: the int32 vector of V's width)
template <class V, class VI>
static inline V exp2_bits(V x) {
  const V lo = splat<V>(-125.0f), hi = splat<V>(127.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const V k = (x + magic) - magic;
  const VI bits = (__builtin_convertvector(k, VI) + 127) << 23;
  return exp2_poly(x - k) * (V)bits;
}

static inline vf vexp2(vf x) {
#if defined(__AVX512F__)
  const vf lo = splat<vf>(-125.0f);
  x = (vf)_mm512_max_ps((__m512)lo, (__m512)x);  // x < lo ? lo : x (NaN stays NaN) in one instruction
  const __m512 k = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (vf)_mm512_scalef_ps((__m512)exp2_poly(x - (vf)k), k);
#else
  return exp2_bits<vf, vi32>(x);
#endif
}

static inline vf vexp(vf x) { return vexp2(x * 1.4426950408889634f); }

static inline vd vexp2(vd x) {
  vd out;
  for (int i = 0; i < Vec<double>::W; ++i) out[i] = std::exp2(x[i]);
  return out;
}

static inline vd vexp(vd x) {
  vd out;
  for (int i = 0; i < Vec<double>::W; ++i) out[i] = std::exp(x[i]);
  return out;
}

static inline vd vsoftplus(vd x) {
  vd out;
  for (int i = 0; i < Vec<double>::W; ++i) out[i] = std::max(x[i], 0.0) + std::log1p(std::exp(-std::fabs(x[i])));
  return out;
}

static inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

static inline vd vsigmoid(vd x) {
  vd out;
  for (int i = 0; i < Vec<double>::W; ++i) out[i] = 1.0 / (1.0 + std::exp(-x[i]));
  return out;
}

// half-width float vectors (8 lanes with AVX-512, 4 with AVX2): SS2D channel blocks of at most W/2 channels run
// on them instead of leaving half of the lanes idle. The same polynomial, 2^k assembled in the exponent bits.
static inline vf_half vexp2(vf_half x) { return exp2_bits<vf_half, vi32_half>(x); }

static inline vf_half vexp(vf_half x) { return vexp2(x * 1.4426950408889634f); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(y), y in (0, 1], from log(w), w = 1 + y in [1, 2], with the
// correction log1p(y) = log(w) * y / (w - 1) that restores the low bits lost in 1 + y. log(w) by 2 atanh(s),
// s = (m - 1) / (m + 1), m = w or w / 2 in [0.707, 1.415], |s| <= 0.172, series to s^9.
template <class V>
static inline V softplus_f32(V x) {
  const V zero{};
  V ax = x < zero ? -x : x;
  V y = vexp(-ax);
  V w = 1.0f + y;
  auto big = w > splat<V>(1.41421356f);
  V m = big ? w * 0.5f : w;
  V e = big ? splat<V>(0.6931471805599453f) : zero;
  V s = (m - 1.0f) / (m + 1.0f);
  V s2 = s * s;
  V p = splat<V>(1.0f / 9.0f);
  p = p * s2 + (1.0f / 7.0f);
  p = p * s2 + (1.0f / 5.0f);
  p = p * s2 + (1.0f / 3.0f);
  p = p * s2 + 1.0f;
  V logw = e + 2.0f * s * p;
  V d = w - 1.0f;
  V l1p = d == zero ? y : logw * (y / d);
  V mx = x > zero ? x : zero;
  return mx + l1p;
}

static inline vf vsoftplus(vf x) { return softplus_f32(x); }
static inline vf_half vsoftplus(vf_half x) { return softplus_f32(x); }

static inline float hsum(vf v) {
  vf_half lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  vf_half s = lo + hi;
  vf_quarter lo2, hi2;
  std::memcpy(&lo2, &s, sizeof lo2);
  std::memcpy(&hi2, reinterpret_cast<const char*>(&s) + sizeof lo2, sizeof hi2);
  vf_quarter s2 = lo2 + hi2;
  float r = 0.0f;
  for (int i = 0; i < static_cast<int>(sizeof(vf_quarter) / sizeof(float)); ++i) r += s2[i];
  return r;
}

static inline double hsum(vd v) {
  vd_half lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  vd_half s = lo + hi;
  double r = 0.0;
  for (int i = 0; i < static_cast<int>(sizeof(vd_half) / sizeof(double)); ++i) r += s[i];
  return r;
}

// ---- W x W transpose of W row vectors in registers (butterfly: stage s swaps bit s of the row and column index)

template <typename T>
static inline void transpose(typename Vec<T>::type* r) {
  using VT = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
#if defined(__GNUC__) && !defined(__clang__)
  using MT = typename Vec<T>::mask;
  for (int s = W / 2; s >= 1; s >>= 1) {
    MT mi, mj;
    for (int p = 0; p < W; ++p) {
      mi[p] = (p & s) ? W + (p ^ s) : p;
      mj[p] = (p & s) ? W + p : (p ^ s);
    }
    for (int i = 0; i < W; ++i) {
      if (i & s) continue;
      const int j = i | s;
      VT a = r[i], b = r[j];
      r[i] = __builtin_shuffle(a, b, mi);
      r[j] = __builtin_shuffle(a, b, mj);
    }
  }
#else
  T tmp[W][W];
  for (int i = 0; i < W; ++i)
    for (int j = 0; j < W; ++j) tmp[j][i] = r[i][j];
  for (int i = 0; i < W; ++i)
    for (int j = 0; j < W; ++j) r[i][j] = tmp[i][j];
#endif
}

// tile[tt][lane] = src[lane * ld + tt] for lane < nl, tt < nt; zero elsewhere (tile has TL vectors)
template <typename T, int TL>
static inline void load_tile(const T* src, int64_t ld, int nl, int nt, typename Vec<T>::type* tile) {
  using VT = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  if (nl == W && nt == TL) {
    for (int blk = 0; blk < TL; blk += W) {
      VT rows[W];
      for (int i = 0; i < W; ++i) std::memcpy(&rows[i], src + i * ld + blk, sizeof(VT));
      transpose<T>(rows);
      for (int i = 0; i < W; ++i) tile[blk + i] = rows[i];
    }
    return;
  }
  for (int tt = 0; tt < TL; ++tt) tile[tt] = VT{};
  for (int lane = 0; lane < nl; ++lane)
    for (int tt = 0; tt < nt; ++tt) tile[tt][lane] = src[lane * ld + tt];
}

// dst[lane * ld + tt] (+)= tile[tt][lane] for lane < nl, tt < nt
template <typename T, int TL>
static inline void store_tile(T* dst, int64_t ld, int nl, int nt, const typename Vec<T>::type* tile, bool add) {
  using VT = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  if (nl == W && nt == TL) {
    for (int blk = 0; blk < TL; blk += W) {
      VT rows[W];
      for (int i = 0; i < W; ++i) rows[i] = tile[blk + i];
      transpose<T>(rows);
      for (int i = 0; i < W; ++i) {
        if (add) {
          VT old;
          std::memcpy(&old, dst + i * ld + blk, sizeof(VT));
          rows[i] += old;
        }
        std::memcpy(dst + i * ld + blk, &rows[i], sizeof(VT));
      }
    }
    return;
  }
  for (int lane = 0; lane < nl; ++lane)
    for (int tt = 0; tt < nt; ++tt) {
      T v = tile[tt][lane];
      dst[lane * ld + tt] = add ? dst[lane * ld + tt] + v : v;
    }
}

template <typename T>
struct Problem {
  const T* u;
  const T* delta;
  const T* A;
  const T* B;
  const T* C;
  const T* D;     // nullable
  const T* bias;  // nullable
  bool softplus;
  int64_t batch, dim, L, N, GB, GC;
  // mirrored mode (SS2D's 4 raster orders without flipped copies): channels >= rev_from scan the positions from
  // last to first and read the u row (c - rev_from); u then has u_dim = dim - rev_from rows. Otherwise
  // rev_from = u_dim = dim. delta, B, C, y and the gradients are always in position order, one row per channel.
  int64_t u_dim, rev_from;
  int64_t seg, blocks_per_seg, nblocks;
  // outputs
  T* y;
  // backward
  const T* gy;
  T* du;
  T* ddelta;
  T* dA_part;  // (batch, dim, N)
  T* dD_part;  // (batch, dim) or nullptr
  T* dB_part;  // (batch, nblocks, N, L)
  T* dC_part;  // (batch, nblocks, N, L)
};

struct Block {
  int64_t c0;  // first channel
  int nl;      // active lanes
  int64_t gb, gc;
  bool rev;       // scans positions L-1 .. 0
  int64_t urow0;  // u row of the first channel
};

template <typename T>
static inline Block block_of(const Problem<T>& p, int64_t j) {
  constexpr int W = Vec<T>::W;
  const int64_t s = j / p.blocks_per_seg, within = j % p.blocks_per_seg;
  Block b;
  b.c0 = s * p.seg + within * W;
  b.nl = static_cast<int>(std::min<int64_t>(W, p.seg - within * W));
  b.gb = b.c0 / (p.dim / p.GB);
  b.gc = b.c0 / (p.dim / p.GC);
  b.rev = b.c0 >= p.rev_from;
  b.urow0 = b.rev ? b.c0 - p.rev_from : b.c0;
  return b;
}

// per-lane parameters of a block: A[n] for the NB states from n0, bias, D (zero in inactive lanes)
template <typename T, int NB>
static inline void lane_params(const Problem<T>& p, const Block& blk, int64_t n0, typename Vec<T>::type* Av,
                               typename Vec<T>::type& biasv, typename Vec<T>::type& Dv) {
  using VT = typename Vec<T>::type;
  for (int n = 0; n < NB; ++n) Av[n] = VT{};
  biasv = VT{};
  Dv = VT{};
  for (int lane = 0; lane < blk.nl; ++lane) {
    const int64_t c = blk.c0 + lane;
    for (int n = 0; n < NB; ++n) Av[n][lane] = p.A[c * p.N + n0 + n];
    if (p.bias) biasv[lane] = p.bias[c];
    if (p.D) Dv[lane] = p.D[c];
  }
}

// B or C rows n0..n0+NB of one group, times t0..t0+nt, into tile[tt * NB + n] (zero beyond nt)
template <typename T, int NB, int TL>
static inline void load_bc(const T* base, int64_t L, int64_t t0, int nt, T* tile) {
  for (int n = 0; n < NB; ++n) {
    const T* row = base + n * L + t0;
    for (int tt = 0; tt < nt; ++tt) tile[tt * NB + n] = row[tt];
    for (int tt = nt; tt < TL; ++tt) tile[tt * NB + n] = T(0);
  }
}

// delta tile -> dt (bias, softplus) and dt * u; keeps the pre-softplus value in x if asked
template <typename T, int TL>
static inline void make_dt(const Problem<T>& p, typename Vec<T>::type biasv, typename Vec<T>::type* dt,
                           const typename Vec<T>::type* uu, typename Vec<T>::type* du, typename Vec<T>::type* x) {
  for (int tt = 0; tt < TL; ++tt) {
    auto v = dt[tt] + biasv;
    if (x) x[tt] = v;
    dt[tt] = p.softplus ? vsoftplus(v) : v;
    du[tt] = dt[tt] * uu[tt];
  }
}

constexpr double kLog2e = 1.4426950408889634;

constexpr int kTileFwd = 64;
constexpr int kTileBwd = 32;

template <typename T, int NB, bool REV>
static void forward_block(const Problem<T>& p, int64_t b, const Block& blk, int64_t n0, bool first) {
  using VT = typename Vec<T>::type;
  constexpr int TL = kTileFwd;
  VT Av[NB], A2[NB], biasv, Dv;
  lane_params<T, NB>(p, blk, n0, Av, biasv, Dv);
  for (int n = 0; n < NB; ++n) A2[n] = Av[n] * T(kLog2e);  // exp(dt * A) = 2^(dt * A * log2(e))
  alignas(64) VT dt[TL], uu[TL], du[TL], yt[TL];
  alignas(64) T Bs[TL * NB], Cs[TL * NB];
  VT h[NB];
  for (int n = 0; n < NB; ++n) h[n] = VT{};
  const int64_t row0 = (b * p.dim + blk.c0) * p.L;
  const int64_t urow = (b * p.u_dim + blk.urow0) * p.L;
  const T* Bbase = p.B + ((b * p.GB + blk.gb) * p.N + n0) * p.L;
  const T* Cbase = p.C + ((b * p.GC + blk.gc) * p.N + n0) * p.L;
  const int64_t nchunks = (p.L + TL - 1) / TL;
  for (int64_t i = 0; i < nchunks; ++i) {
    const int64_t t0 = (REV ? nchunks - 1 - i : i) * TL;
    const int nt = static_cast<int>(std::min<int64_t>(TL, p.L - t0));
    load_tile<T, TL>(p.delta + row0 + t0, p.L, blk.nl, nt, dt);
    load_tile<T, TL>(p.u + urow + t0, p.L, blk.nl, nt, uu);
    make_dt<T, TL>(p, biasv, dt, uu, du, nullptr);
    load_bc<T, NB, TL>(Bbase, p.L, t0, nt, Bs);
    load_bc<T, NB, TL>(Cbase, p.L, t0, nt, Cs);
    for (int j = 0; j < nt; ++j) {
      const int tt = REV ? nt - 1 - j : j;
      VT yv = first ? Dv * uu[tt] : VT{};
      const VT dtt = dt[tt], dut = du[tt];
#pragma GCC unroll 16
      for (int n = 0; n < NB; ++n) {
        const VT a = vexp2(dtt * A2[n]);
        h[n] = a * h[n] + dut * Bs[tt * NB + n];
        yv += h[n] * Cs[tt * NB + n];
      }
      yt[tt] = yv;
    }
    store_tile<T, TL>(p.y + row0 + t0, p.L, blk.nl, nt, yt, !first);
  }
}

template <typename T, int NB, bool REV>
static void backward_block(const Problem<T>& p, int64_t b, int64_t j, const Block& blk, int64_t n0, bool first) {
  using VT = typename Vec<T>::type;
  constexpr int TL = kTileBwd;
  VT Av[NB], A2[NB], biasv, Dv;
  lane_params<T, NB>(p, blk, n0, Av, biasv, Dv);
  for (int n = 0; n < NB; ++n) A2[n] = Av[n] * T(kLog2e);
  const int64_t nchunks = (p.L + TL - 1) / TL;
  std::vector<VT> hstart(static_cast<size_t>(nchunks * NB));
  std::vector<VT> hbuf(static_cast<size_t>(TL * NB)), abuf(static_cast<size_t>(TL * NB));
  alignas(64) VT dt[TL], uu[TL], du[TL], x[TL], gyt[TL], dut[TL], ddt[TL];
  alignas(64) T Bs[TL * NB], Cs[TL * NB], dBs[TL * NB], dCs[TL * NB];
  const int64_t row0 = (b * p.dim + blk.c0) * p.L;
  const int64_t urow = (b * p.u_dim + blk.urow0) * p.L;
  const T* Bbase = p.B + ((b * p.GB + blk.gb) * p.N + n0) * p.L;
  const T* Cbase = p.C + ((b * p.GC + blk.gc) * p.N + n0) * p.L;
  T* dBbase = p.dB_part + ((b * p.nblocks + j) * p.N + n0) * p.L;
  T* dCbase = p.dC_part + ((b * p.nblocks + j) * p.N + n0) * p.L;

  // sweep 1, in scan order (REV: tiles and positions from last to first): the state entering every tile
  VT h[NB];
  for (int n = 0; n < NB; ++n) h[n] = VT{};
  for (int64_t i = 0; i < nchunks; ++i) {
    const int64_t k = REV ? nchunks - 1 - i : i;
    const int64_t t0 = k * TL;
    const int nt = static_cast<int>(std::min<int64_t>(TL, p.L - t0));
    for (int n = 0; n < NB; ++n) hstart[k * NB + n] = h[n];
    load_tile<T, TL>(p.delta + row0 + t0, p.L, blk.nl, nt, dt);
    load_tile<T, TL>(p.u + urow + t0, p.L, blk.nl, nt, uu);
    make_dt<T, TL>(p, biasv, dt, uu, du, nullptr);
    load_bc<T, NB, TL>(Bbase, p.L, t0, nt, Bs);
    for (int j = 0; j < nt; ++j) {
      const int tt = REV ? nt - 1 - j : j;
#pragma GCC unroll 16
      for (int n = 0; n < NB; ++n) h[n] = vexp2(dt[tt] * A2[n]) * h[n] + du[tt] * Bs[tt * NB + n];
    }
  }

  // sweep 2: tiles in reverse; g[n] carries exp(dt_{t+1} A) * (adjoint of h_{t+1})
  VT g[NB], dAacc[NB];
  for (int n = 0; n < NB; ++n) g[n] = dAacc[n] = VT{};
  VT dDacc{};
  for (int64_t i = nchunks - 1; i >= 0; --i) {
    const int64_t k = REV ? nchunks - 1 - i : i;
    const int64_t t0 = k * TL;
    const int nt = static_cast<int>(std::min<int64_t>(TL, p.L - t0));
    load_tile<T, TL>(p.delta + row0 + t0, p.L, blk.nl, nt, dt);
    load_tile<T, TL>(p.u + urow + t0, p.L, blk.nl, nt, uu);
    load_tile<T, TL>(p.gy + row0 + t0, p.L, blk.nl, nt, gyt);
    make_dt<T, TL>(p, biasv, dt, uu, du, x);
    load_bc<T, NB, TL>(Bbase, p.L, t0, nt, Bs);
    load_bc<T, NB, TL>(Cbase, p.L, t0, nt, Cs);
    for (int n = 0; n < NB; ++n) h[n] = hstart[k * NB + n];
    for (int j = 0; j < nt; ++j) {
      const int tt = REV ? nt - 1 - j : j;
#pragma GCC unroll 16
      for (int n = 0; n < NB; ++n) {
        const VT a = vexp2(dt[tt] * A2[n]);
        h[n] = a * h[n] + du[tt] * Bs[tt * NB + n];
        abuf[tt * NB + n] = a;
        hbuf[tt * NB + n] = h[n];
      }
    }
    for (int j = nt - 1; j >= 0; --j) {
      const int tt = REV ? nt - 1 - j : j;
      const int tprev = REV ? tt + 1 : tt - 1;  // position scanned just before tt (valid for j > 0)
      VT dsum{}, usum{};
      const VT gy = gyt[tt], dtt = dt[tt], dutt = du[tt], ut = uu[tt];
#pragma GCC unroll 16
      for (int n = 0; n < NB; ++n) {
        const VT a = abuf[tt * NB + n];
        const VT hp = j > 0 ? hbuf[tprev * NB + n] : hstart[k * NB + n];
        const T Bv = Bs[tt * NB + n], Cv = Cs[tt * NB + n];
        const VT gh = g[n] + gy * Cv;  // adjoint of h_t
        dCs[tt * NB + n] = hsum(gy * hbuf[tt * NB + n]);
        dBs[tt * NB + n] = hsum(gh * dutt);
        usum += gh * Bv;
        const VT ahp = a * hp;
        dsum += gh * (Av[n] * ahp + Bv * ut);
        dAacc[n] += gh * ahp * dtt;
        g[n] = a * gh;
      }
      dut[tt] = usum * dtt;
      if (first) {
        dut[tt] += Dv * gy;
        dDacc += gy * ut;
      }
      ddt[tt] = p.softplus ? dsum * vsigmoid(x[tt]) : dsum;
    }
    store_tile<T, TL>(p.du + row0 + t0, p.L, blk.nl, nt, dut, !first);
    store_tile<T, TL>(p.ddelta + row0 + t0, p.L, blk.nl, nt, ddt, !first);
    for (int n = 0; n < NB; ++n)
      for (int tt = 0; tt < nt; ++tt) {
        dBbase[n * p.L + t0 + tt] = dBs[tt * NB + n];
        dCbase[n * p.L + t0 + tt] = dCs[tt * NB + n];
      }
  }
  for (int lane = 0; lane < blk.nl; ++lane) {
    const int64_t c = blk.c0 + lane;
    for (int n = 0; n < NB; ++n) p.dA_part[(b * p.dim + c) * p.N + n0 + n] = dAacc[n][lane];
    if (first && p.dD_part) p.dD_part[b * p.dim + c] = dDacc[lane];
  }
}

// run fn<NB>(n0, first) over state blocks of 16, 8, 4, 2, 1
template <typename F>
static inline void over_state_blocks(int64_t N, F&& fn) {
  int64_t n0 = 0;
  while (n0 < N) {
    const int64_t rem = N - n0;
    const bool first = n0 == 0;
    if (rem >= 16) {
      fn(std::integral_constant<int, 16>{}, n0, first);
      n0 += 16;
    } else if (rem >= 8) {
      fn(std::integral_constant<int, 8>{}, n0, first);
      n0 += 8;
    } else if (rem >= 4) {
      fn(std::integral_constant<int, 4>{}, n0, first);
      n0 += 4;
    } else if (rem >= 2) {
      fn(std::integral_constant<int, 2>{}, n0, first);
      n0 += 2;
    } else {
      fn(std::integral_constant<int, 1>{}, n0, first);
      n0 += 1;
    }
  }
}

static int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

template <typename T>
static Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                               const at::Tensor& C, const std::optional<at::Tensor>& D,
                               const std::optional<at::Tensor>& bias, bool softplus, bool mirrored) {
  Problem<T> p{};
  p.u = u.data_ptr<T>();
  p.delta = delta.data_ptr<T>();
  p.A = A.data_ptr<T>();
  p.B = B.data_ptr<T>();
  p.C = C.data_ptr<T>();
  p.D = D.has_value() ? D->data_ptr<T>() : nullptr;
  p.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  p.softplus = softplus;
  p.batch = delta.size(0);
  p.dim = delta.size(1);
  p.L = delta.size(2);
  p.u_dim = u.size(1);
  p.rev_from = mirrored ? p.dim - p.u_dim : p.dim;
  p.N = A.size(1);
  p.GB = B.size(1);
  p.GC = C.size(1);
  p.seg = std::max<int64_t>(1, gcd64(p.dim / p.GB, p.dim / p.GC));  // 1 for zero channels
  if (mirrored && p.rev_from > 0) p.seg = gcd64(p.seg, p.rev_from);  // no block straddles the reversed half
  constexpr int W = Vec<T>::W;
  p.blocks_per_seg = (p.seg + W - 1) / W;
  p.nblocks = (p.dim / p.seg) * p.blocks_per_seg;
  return p;
}

static void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& C, const std::optional<at::Tensor>& D,
                         const std::optional<at::Tensor>& bias, bool mirrored) {
  TORCH_CHECK(u.device().is_cpu(), "fused CPU scan: tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, "fused CPU scan: float32 or float64");
  TORCH_CHECK(u.dim() == 3 && delta.dim() == 3, "fused CPU scan: u, delta must be (batch, channels, L)");
  const int64_t batch = delta.size(0), dim = delta.size(1), L = delta.size(2);
  if (mirrored) {
    TORCH_CHECK(dim % 2 == 0 && u.size(0) == batch && u.size(1) == dim / 2 && u.size(2) == L,
                "fused CPU scan (mirrored): delta must be (batch, 2 * channels, L) for u (batch, channels, L)");
  } else {
    TORCH_CHECK(delta.sizes() == u.sizes(), "fused CPU scan: u, delta must both be (batch, channels, L)");
  }
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, "fused CPU scan: A must be (channels, N)");
  const int64_t N = A.size(1);
  for (const at::Tensor* t : {&B, &C}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == batch && t->size(2) == N && t->size(3) == L && t->size(1) > 0 &&
                    dim % t->size(1) == 0,
                "fused CPU scan: B, C must be (batch, groups, N, L) with groups dividing channels");
  }
  std::vector<const at::Tensor*> all = {&u, &delta, &A, &B, &C};
  if (D.has_value()) {
    TORCH_CHECK(D->dim() == 1 && D->size(0) == dim, "fused CPU scan: D must be (channels,)");
    all.push_back(&*D);
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == dim, "fused CPU scan: delta_bias must be (channels,)");
    all.push_back(&*bias);
  }
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "fused CPU scan: all tensors must share one dtype");
    TORCH_CHECK(t->is_contiguous(), "fused CPU scan: tensors must be contiguous");
    TORCH_CHECK(t->device().is_cpu(), "fused CPU scan: tensors must be on the CPU");
  }
}

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& bias,
                    bool softplus, bool mirrored) {
  check_inputs(u, delta, A, B, C, D, bias, mirrored);
  at::Tensor y = at::empty_like(delta);
  if (delta.numel() == 0) return y.zero_();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambaseg_scan_fwd", [&] {
    Problem<scalar_t> p = make_problem<scalar_t>(u, delta, A, B, C, D, bias, softplus, mirrored);
    p.y = y.data_ptr<scalar_t>();
    if (p.N == 0) {
      const at::Tensor uf = mirrored ? at::cat({u, u}, 1) : u;  // reversed channels read u at the same position
      y.copy_(D.has_value() ? uf * D->view({1, -1, 1}) : at::zeros_like(delta));
      return;
    }
    at::parallel_for(0, p.batch * p.nblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / p.nblocks, j = task % p.nblocks;
        const Block blk = block_of(p, j);
        over_state_blocks(p.N, [&](auto nb, int64_t n0, bool first) {
          if (blk.rev)
            forward_block<scalar_t, decltype(nb)::value, true>(p, b, blk, n0, first);
          else
            forward_block<scalar_t, decltype(nb)::value, false>(p, b, blk, n0, first);
        });
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& bias, bool softplus, bool mirrored,
    const at::Tensor& gy) {
  check_inputs(u, delta, A, B, C, D, bias, mirrored);
  TORCH_CHECK(gy.sizes() == delta.sizes() && gy.scalar_type() == u.scalar_type() && gy.is_contiguous(),
              "fused CPU scan: grad of y must match delta");
  // every element of the outputs is written by the kernel (the first state block stores, later ones add)
  const int64_t batch = delta.size(0), dim = delta.size(1), L = delta.size(2), N = A.size(1);
  const bool degenerate = delta.numel() == 0 || N == 0;
  auto make = [&](at::IntArrayRef size) {
    return degenerate ? at::zeros(size, u.options()) : at::empty(size, u.options());
  };
  // du has one row per channel (in mirrored mode the caller adds the two halves)
  at::Tensor du = make(delta.sizes()), ddelta = make(delta.sizes());
  at::Tensor dA_part = make({batch, dim, N});
  at::Tensor dD_part = D.has_value() ? make({batch, dim}) : at::empty({0}, u.options());
  at::Tensor dB_part, dC_part;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambaseg_scan_bwd", [&] {
    Problem<scalar_t> p = make_problem<scalar_t>(u, delta, A, B, C, D, bias, softplus, mirrored);
    dB_part = make({batch, p.nblocks, N, L});
    dC_part = make({batch, p.nblocks, N, L});
    if (degenerate) {
      if (D.has_value()) {
        const at::Tensor uf = mirrored ? at::cat({u, u}, 1) : u;
        du.copy_(gy * D->view({1, -1, 1}));
        dD_part.copy_((gy * uf).sum(2));
      }
      return;
    }
    p.gy = gy.data_ptr<scalar_t>();
    p.du = du.data_ptr<scalar_t>();
    p.ddelta = ddelta.data_ptr<scalar_t>();
    p.dA_part = dA_part.data_ptr<scalar_t>();
    p.dD_part = D.has_value() ? dD_part.data_ptr<scalar_t>() : nullptr;
    p.dB_part = dB_part.data_ptr<scalar_t>();
    p.dC_part = dC_part.data_ptr<scalar_t>();
    at::parallel_for(0, p.batch * p.nblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / p.nblocks, j = task % p.nblocks;
        const Block blk = block_of(p, j);
        over_state_blocks(p.N, [&](auto nb, int64_t n0, bool first) {
          if (blk.rev)
            backward_block<scalar_t, decltype(nb)::value, true>(p, b, j, blk, n0, first);
          else
            backward_block<scalar_t, decltype(nb)::value, false>(p, b, j, blk, n0, first);
        });
      }
    });
  });
  return {du, ddelta, dA_part, dD_part, dB_part, dC_part};
}

// ---- SS2D inference: the 4 raster scan orders read straight from channels-last maps, merged output
//
// x (batch, H, W, D) channels-last; xdbl (batch, H*W, 4, R + 2N): per position and direction k the low-rank dt
// inputs (R), then B (N), then C (N), i.e. x_proj of that position; wdt (4, R, D): dt_proj weights, transposed so
// the lanes (channels) are contiguous; A (4D, N), D and delta_bias (4D,) with channel index k * D + c.
// Direction k scans the positions in the order of cross_scan: 0 row-major, 1 column-major, 2 and 3 their reverses.
// Output y (batch, H, W, D) = the sum over the 4 directions of each direction's scan output at that position (the
// cross-merge), in position order. One task owns (batch element, block of W channels) and runs the 4 directions one
// after the other, adding into its own slice of y (no races, no (4, D, L) intermediates); with too few such tasks
// for the threads, each (task, direction) is its own task writing its own copy of y, summed at the end.
// Forward only (inference); training keeps the differentiable scan above.

// scan positions of one direction: row order p = h * Wd + w, or column order (h fastest), forwards or backwards
struct PosIter {
  int64_t H, Wd, h, w, p;
  bool col, rev;
  PosIter(int64_t H_, int64_t Wd_, bool col_, bool rev_) : H(H_), Wd(Wd_), col(col_), rev(rev_) {
    h = rev ? H - 1 : 0;
    w = rev ? Wd - 1 : 0;
    p = h * Wd + w;
  }
  inline void next() {
    if (!col) {
      p += rev ? -1 : 1;
      return;
    }
    if (!rev) {
      if (++h == H) {
        h = 0;
        ++w;
      }
    } else if (--h < 0) {
      h = H - 1;
      --w;
    }
    p = h * Wd + w;
  }
};

template <typename T>
struct Ss2dProblem {
  const T* x;
  const T* xdbl;
  const T* wdt;
  const T* A;
  const T* Dskip;  // nullable
  const T* bias;   // nullable
  bool softplus;
  int64_t batch, H, Wd, L, D, R, N, CD, nblocks;
  T* y;  // (batch, L, D), or (4, batch, L, D) when split
  bool split;
};

template <typename T, typename VT>
static inline VT load_lanes(const T* src, int nl) {
  VT v{};
  std::memcpy(&v, src, sizeof(T) * static_cast<size_t>(nl));
  return v;
}

template <typename T, typename VT>
static inline void store_lanes(T* dst, VT v, int nl, bool add) {
  if (add) v += load_lanes<T, VT>(dst, nl);
  std::memcpy(dst, &v, sizeof(T) * static_cast<size_t>(nl));
}

constexpr int kTileSs2d = 32;

// direction k, channels c0 .. c0 + nl (nl <= lanes of VT), states n0 .. n0 + NB of batch element b; y rows of this
// batch element at yb
template <typename T, typename VT, int NB>
static void ss2d_block(const Ss2dProblem<T>& p, int64_t b, int64_t c0, int nl, int k, int64_t n0, bool store,
                       T* yb) {
  constexpr int TL = kTileSs2d;
  constexpr int WL = static_cast<int>(sizeof(VT) / sizeof(T));
  VT A2[NB], biasv{}, Dv{};
  for (int n = 0; n < NB; ++n) A2[n] = VT{};
  for (int lane = 0; lane < nl; ++lane) {
    const int64_t ch = k * p.D + c0 + lane;
    for (int n = 0; n < NB; ++n) A2[n][lane] = p.A[ch * p.N + n0 + n] * T(kLog2e);
    if (p.bias) biasv[lane] = p.bias[ch];
    if (p.Dskip) Dv[lane] = p.Dskip[ch];
  }
  std::vector<VT> wv(static_cast<size_t>(p.R));
  for (int64_t r = 0; r < p.R; ++r) wv[r] = load_lanes<T, VT>(p.wdt + (k * p.R + r) * p.D + c0, nl);
  const bool first = n0 == 0;
  VT h[NB];
  for (int n = 0; n < NB; ++n) h[n] = VT{};
  alignas(64) VT dt[TL], du[TL], uu[TL];
  int64_t pos[TL];
  PosIter it(p.H, p.Wd, (k & 1) != 0, k >= 2);
  const T* xb = p.x + b * p.L * p.D + c0;
  const T* rb = p.xdbl + (b * p.L * 4 + k) * p.CD;
  for (int64_t t0 = 0; t0 < p.L; t0 += TL) {
    const int nt = static_cast<int>(std::min<int64_t>(TL, p.L - t0));
    for (int tt = 0; tt < nt; ++tt) {
      pos[tt] = it.p;
      it.next();
      const T* row = rb + pos[tt] * 4 * p.CD;
      // full blocks pass the lane count as a constant: the memcpy then compiles to one vector load / store
      uu[tt] = nl == WL ? load_lanes<T, VT>(xb + pos[tt] * p.D, WL) : load_lanes<T, VT>(xb + pos[tt] * p.D, nl);
      VT v = biasv;
      for (int64_t r = 0; r < p.R; ++r) v += wv[r] * row[r];
      dt[tt] = p.softplus ? vsoftplus(v) : v;
      du[tt] = dt[tt] * uu[tt];
    }
    for (int tt = 0; tt < nt; ++tt) {
      const T* Brow = rb + pos[tt] * 4 * p.CD + p.R + n0;
      const T* Crow = Brow + p.N;
      VT yv = first ? Dv * uu[tt] : VT{};
      const VT dtt = dt[tt], dut = du[tt];
#pragma GCC unroll 16
      for (int n = 0; n < NB; ++n) {
        const VT a = vexp2(dtt * A2[n]);
        h[n] = a * h[n] + dut * Brow[n];
        yv += h[n] * Crow[n];
      }
      if (nl == WL)
        store_lanes<T, VT>(yb + pos[tt] * p.D + c0, yv, WL, !(store && first));
      else
        store_lanes<T, VT>(yb + pos[tt] * p.D + c0, yv, nl, !(store && first));
    }
  }
}

at::Tensor ss2d_fwd(const at::Tensor& x, const at::Tensor& xdbl, const at::Tensor& wdt, const at::Tensor& A,
                    const std::optional<at::Tensor>& Dskip, const std::optional<at::Tensor>& bias, bool softplus) {
  TORCH_CHECK(x.device().is_cpu(), "fused SS2D scan: tensors must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "fused SS2D scan: float32 or float64");
  TORCH_CHECK(x.dim() == 4, "fused SS2D scan: x must be (batch, H, W, D)");
  const int64_t batch = x.size(0), H = x.size(1), Wd = x.size(2), D = x.size(3), L = H * Wd;
  TORCH_CHECK(A.dim() == 2 && A.size(0) == 4 * D, "fused SS2D scan: A must be (4 * D, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(wdt.dim() == 3 && wdt.size(0) == 4 && wdt.size(2) == D, "fused SS2D scan: dt weights must be (4, R, D)");
  const int64_t R = wdt.size(1);
  TORCH_CHECK(xdbl.dim() == 4 && xdbl.size(0) == batch && xdbl.size(1) == L && xdbl.size(2) == 4 &&
                  xdbl.size(3) == R + 2 * N,
              "fused SS2D scan: xdbl must be (batch, H * W, 4, R + 2 * N)");
  std::vector<const at::Tensor*> all = {&x, &xdbl, &wdt, &A};
  if (Dskip.has_value()) {
    TORCH_CHECK(Dskip->dim() == 1 && Dskip->size(0) == 4 * D, "fused SS2D scan: D must be (4 * D,)");
    all.push_back(&*Dskip);
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * D, "fused SS2D scan: delta_bias must be (4 * D,)");
    all.push_back(&*bias);
  }
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "fused SS2D scan: all tensors must share one dtype");
    TORCH_CHECK(t->is_contiguous(), "fused SS2D scan: tensors must be contiguous");
    TORCH_CHECK(t->device().is_cpu(), "fused SS2D scan: tensors must be on the CPU");
  }
  at::Tensor y = at::empty_like(x);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mambaseg_ss2d_fwd", [&] {
    constexpr int W = Vec<scalar_t>::W;
    Ss2dProblem<scalar_t> p{};
    p.x = x.data_ptr<scalar_t>();
    p.xdbl = xdbl.data_ptr<scalar_t>();
    p.wdt = wdt.data_ptr<scalar_t>();
    p.A = A.data_ptr<scalar_t>();
    p.Dskip = Dskip.has_value() ? Dskip->data_ptr<scalar_t>() : nullptr;
    p.bias = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    p.softplus = softplus;
    p.batch = batch;
    p.H = H;
    p.Wd = Wd;
    p.L = L;
    p.D = D;
    p.R = R;
    p.N = N;
    p.CD = R + 2 * N;
    p.nblocks = (D + W - 1) / W;
    if (N == 0) {  // no state: y = sum over directions of D * u
      const at::Tensor Dsum = Dskip.has_value() ? Dskip->view({4, D}).sum(0) : at::zeros({D}, x.options());
      y.copy_(x * Dsum);
      return;
    }
    // few (batch, channel block) tasks for the threads: one task per direction, each with its own output copy
    p.split = p.batch * p.nblocks < 4 * static_cast<int64_t>(at::get_num_threads());
    at::Tensor y4 = p.split ? at::empty({4, batch, L, D}, x.options()) : at::Tensor();
    p.y = p.split ? y4.data_ptr<scalar_t>() : y.data_ptr<scalar_t>();
    const int64_t ndir = p.split ? 4 : 1;
    at::parallel_for(0, p.batch * p.nblocks * ndir, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t kk = task % ndir, bj = task / ndir;
        const int64_t b = bj / p.nblocks, j = bj % p.nblocks;
        const int64_t c0 = j * W;
        const int nl = static_cast<int>(std::min<int64_t>(W, p.D - c0));
        for (int k = 0; k < 4; ++k) {
          if (p.split && k != kk) continue;
          scalar_t* yb = p.y + ((p.split ? k * p.batch : 0) + b) * p.L * p.D;
          const bool store = p.split || k == 0;
          over_state_blocks(p.N, [&](auto nb, int64_t n0, bool) {
            constexpr int NB = decltype(nb)::value;
            if constexpr (std::is_same<scalar_t, float>::value) {
              if (2 * nl <= W) {  // a block of at most W/2 channels: half-width vectors
                ss2d_block<scalar_t, vf_half, NB>(p, b, c0, nl, k, n0, store, yb);
                return;
              }
            }
            ss2d_block<scalar_t, typename Vec<scalar_t>::type, NB>(p, b, c0, nl, k, n0, store, yb);
          });
        }
      }
    });
    if (p.split) {
      at::Tensor flat = y.view({batch, L, D});
      at::sum_out(flat, y4, {0});
    }
  });
  return y;
}

int64_t simd_lanes_float() { return Vec<float>::W; }

}  // namespace mambaseg_scan

TORCH_LIBRARY(mambaseg_scan, m) {
  m.def("fwd", &mambaseg_scan::scan_fwd);
  m.def("bwd", &mambaseg_scan::scan_bwd);
  m.def("ss2d_fwd", &mambaseg_scan::ss2d_fwd);
  m.def("lanes", &mambaseg_scan::simd_lanes_float);
}
