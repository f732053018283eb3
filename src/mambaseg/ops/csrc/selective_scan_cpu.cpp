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
static inline vf vexp2(vf x) {
  const vf lo = splat<vf>(-125.0f);
  x = x < lo ? lo : x;
#if defined(__AVX512F__)
  const __m512 k = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf r = x - (vf)k;
#else
  const vf hi = splat<vf>(127.0f);
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const vf k = (x + magic) - magic;
  const vf r = x - k;
#endif
  vf p = splat<vf>(1.535336196e-4f);
  p = p * r + 1.339887502e-3f;
  p = p * r + 9.618436918e-3f;
  p = p * r + 5.550332367e-2f;
  p = p * r + 2.402264774e-1f;
  p = p * r + 6.931471825e-1f;
  p = p * r + 1.0f;
#if defined(__AVX512F__)
  return (vf)_mm512_scalef_ps((__m512)p, k);
#else
  const vi32 bits = (__builtin_convertvector(k, vi32) + 127) << 23;
  return p * (vf)bits;
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

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(y), y in (0, 1], from log(w), w = 1 + y in [1, 2], with the
// correction log1p(y) = log(w) * y / (w - 1) that restores the low bits lost in 1 + y. log(w) by 2 atanh(s),
// s = (m - 1) / (m + 1), m = w or w / 2 in [0.707, 1.415], |s| <= 0.172, series to s^9.
static inline vf vsoftplus(vf x) {
  const vf zero{};
  vf ax = x < zero ? -x : x;
  vf y = vexp(-ax);
  vf w = 1.0f + y;
  auto big = w > splat<vf>(1.41421356f);
  vf m = big ? w * 0.5f : w;
  vf e = big ? splat<vf>(0.6931471805599453f) : zero;
  vf s = (m - 1.0f) / (m + 1.0f);
  vf s2 = s * s;
  vf p = splat<vf>(1.0f / 9.0f);
  p = p * s2 + (1.0f / 7.0f);
  p = p * s2 + (1.0f / 5.0f);
  p = p * s2 + (1.0f / 3.0f);
  p = p * s2 + 1.0f;
  vf logw = e + 2.0f * s * p;
  vf d = w - 1.0f;
  vf l1p = d == zero ? y : logw * (y / d);
  vf mx = x > zero ? x : zero;
  return mx + l1p;
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

int64_t simd_lanes_float() { return Vec<float>::W; }

}  // namespace mambaseg_scan

TORCH_LIBRARY(mambaseg_scan, m) {
  m.def("fwd", &mambaseg_scan::scan_fwd);
  m.def("bwd", &mambaseg_scan::scan_bwd);
  m.def("lanes", &mambaseg_scan::simd_lanes_float);
}
