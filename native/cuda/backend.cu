// The CUDA backend of the kernels (native/core/backend.h): sample, probabilities, verify,
// acceptance_rate and kd_loss with the CPU's semantics (distribution.h, sampling.h, kd.h)
// and the same Philox streams (philox.h).
//
// One block per row (per (sequence, position) for verify). A row's passes read its
// logits with 16-byte loads where the row is 16-byte aligned, in tiles of kTile tokens:
// thread t holds the 4 consecutive tokens tile + 4t .. tile + 4t + 3, so that a
// block-wide exclusive scan over the threads' sums walks the tile in index order (the
// inverse CDF). Weights are float exps, as the CPU's; sums are double. Where no filter
// applies, a row's maximum and total come from one online pass. No host
// synchronisation between kernels of a call.
//
// Filters without a sort: every filter of distribution.h keeps a prefix of the sampling
// order (logit descending, ties by lower index), so the kept set is "x at or before a
// cut token". top-k finds the k-th token by radix select on the logits' order keys
// (4 rounds of 8 bits, counts), top-p by the same select on mass histograms, then the
// cut among tied logits by a scan in index order; min-p keeps w >= min_p (w of the
// argmax is exp(0) = 1 exactly here).
#include "backend.h"

#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "error.h"
#include "philox.h"

namespace specula {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = kThreads * 4;
// Blocks per SM the row kernels are compiled for. Sampling, verify and acceptance at 2
// (registers capped at 64 a thread: a few bytes of spills, twice the warps to cover
// memory latency) ran 1.2-1.5x faster on the H200 than at 1; KD's double-precision
// per-token arithmetic, 1.25x slower, so it keeps all the registers it wants.
#ifndef SPECULA_CUDA_MIN_BLOCKS
#define SPECULA_CUDA_MIN_BLOCKS 2
#endif
constexpr int kMinBlocks = SPECULA_CUDA_MIN_BLOCKS;
constexpr int kKdMinBlocks = 1;
constexpr double kResidualFloor = 1e-12;  // sampling.cc

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(Code::State, std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

// ---- block-wide helpers (blockDim.x == kThreads) ----

struct Shared {
  double d[kWarps];
  int i[kWarps];
  float f[kWarps];
};

__device__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// The sum over the block, returned to every thread.
__device__ double block_sum(double v, Shared& sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.d[w] = v;
  __syncthreads();
  double t = 0;
  for (int i = 0; i < kWarps; ++i) t += sh.d[i];
  __syncthreads();
  return t;
}

// Counts go through the double sum: exact below 2^53.
__device__ int block_sum_int(int v, Shared& sh) { return int(block_sum(double(v), sh)); }

__device__ int block_min_int(int v, Shared& sh) {
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.i[w] = v;
  __syncthreads();
  int t = sh.i[0];
  for (int i = 1; i < kWarps; ++i) t = min(t, sh.i[i]);
  __syncthreads();
  return t;
}

__device__ int block_max_int(int v, Shared& sh) { return -block_min_int(-v, sh); }

// Exclusive prefix sum over the threads in thread order; *total gets the block's sum.
__device__ double block_scan(double v, double* total, Shared& sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  double inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const double n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) sh.d[w] = inc;
  __syncthreads();
  double before = 0, t = 0;
  for (int i = 0; i < kWarps; ++i) {
    if (i < w) before += sh.d[i];
    t += sh.d[i];
  }
  __syncthreads();
  *total = t;
  return before + inc - v;
}

__device__ int block_scan_int(int v, int* total, Shared& sh) {
  double t;
  const int before = int(block_scan(double(v), &t, sh));
  *total = int(t);
  return before;
}

// The 4 tokens x..x+3 of a row (x a multiple of 4); n of them exist.
struct Four {
  float v[4];
  int n;
};
__device__ Four load4(const float* z, int V, int x, bool aligned) {
  Four f;
  f.n = V - x < 4 ? (V - x > 0 ? V - x : 0) : 4;
  if (aligned && f.n == 4) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(z + x));
    f.v[0] = q.x;
    f.v[1] = q.y;
    f.v[2] = q.z;
    f.v[3] = q.w;
  } else {
    for (int j = 0; j < 4; ++j) f.v[j] = j < f.n ? __ldg(z + x + j) : 0.0f;
  }
  return f;
}

__device__ bool is_aligned(const float* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// f(x0, four) over the thread's tiles of row z in order, each tile's load issued before
// f runs on the one before it: two loads in flight per thread, which an H200 needs to
// cover memory latency at 1-2 blocks of kThreads per SM.
template <class F>
__device__ void for_tiles(const float* z, int V, bool al, F f) {
  int x0 = 4 * threadIdx.x;
  Four cur = load4(z, V, x0, al);
  for (int base = 0; base < V; base += kTile, x0 += kTile) {
    const Four next = load4(z, V, x0 + kTile, al);  // n = 0 past the row: no load
    f(x0, cur);
    cur = next;
  }
}

// The same over two rows of one length at once: f(x0, four of a, four of b).
template <class F>
__device__ void for_tiles2(const float* a, const float* b, int V, bool al, F f) {
  int x0 = 4 * threadIdx.x;
  Four ca = load4(a, V, x0, al), cb = load4(b, V, x0, al);
  for (int base = 0; base < V; base += kTile, x0 += kTile) {
    const Four na = load4(a, V, x0 + kTile, al), nb = load4(b, V, x0 + kTile, al);
    f(x0, ca, cb);
    ca = na;
    cb = nb;
  }
}

// Order key: larger logit -> larger key; -0 and +0 are one logit (they compare equal).
__device__ uint32_t order_key(float z) {
  const uint32_t u = __float_as_uint(z + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Online softmax: adds exp((v - m) t) for a finite v to a thread's running sum (fs for
// the current tile, s before it) kept at its running maximum m, moving both sums when v
// raises m. True where it did.
__device__ bool online_add(float v, float t, float& m, double& s, float& fs) {
  const bool raised = v > m;
  if (raised) {
    if (m != -INFINITY) {
      const float rescale = expf((m - v) * t);
      s *= rescale;
      fs *= rescale;
    }
    m = v;
  }
  fs += expf((v - m) * t);
  return raised;
}

// ---- one row's sampling distribution ----

struct RowParams {
  double temperature;
  long long top_k;
  double top_p, min_p;
};

// w(x) = exp((z[x] - zmax) inv_t) for x at or before the cut (key > cut_key, or equal
// key and x <= cut_index) with w >= min_w; 0 otherwise. Greedy: 1 at argmax.
struct Dist {
  float zmax;
  int argmax;
  int bad;  // first non-finite index, or INT_MAX
  bool greedy;
  double inv_t;
  uint32_t cut_key;
  int cut_index;
  double min_w;
  double total;
  // The weight in float, as the CPU computes it (a float exp of a float exponent; the
  // sums over weights are double). A double exp here cost ~5x the kernels' time on
  // an H200 (measured), where the CPU's float weights make it no more exact.
  __device__ float wf(int x, float z) const {
    if (greedy) return x == argmax ? 1.0f : 0.0f;
    const uint32_t k = order_key(z);
    if (k < cut_key || (k == cut_key && x > cut_index)) return 0.0f;
    const float v = weight_of(z);
    return double(v) >= min_w ? v : 0.0f;
  }
  __device__ double w(int x, float z) const { return wf(x, z); }
  // exp((z - zmax) / T) without the filters.
  __device__ float weight_of(float z) const { return expf((z - zmax) * float(inv_t)); }
};

// The index of the r-th (1-based) token with order key `key` among those kept by
// keep(x, z), in index order.
template <class Keep>
__device__ int nth_equal(const float* z, int V, bool al, uint32_t key, int r, Keep keep, Shared& sh) {
  __shared__ int found;
  if (threadIdx.x == 0) found = V - 1;
  __syncthreads();
  int seen = 0;
  for (int base = 0; base < V; base += kTile) {
    const int x0 = base + 4 * threadIdx.x;
    const Four f = load4(z, V, x0, al);
    int c = 0;
    for (int j = 0; j < f.n; ++j) c += order_key(f.v[j]) == key && keep(x0 + j, f.v[j]);
    int total;
    const int before = block_scan_int(c, &total, sh);
    if (seen + before < r && r <= seen + before + c) {
      int k = seen + before;
      for (int j = 0; j < f.n; ++j)
        if (order_key(f.v[j]) == key && keep(x0 + j, f.v[j]) && ++k == r) found = x0 + j;
    }
    seen += total;
    __syncthreads();
    if (seen >= r) break;
  }
  __syncthreads();
  return found;
}

// Builds d for row z (V) under p. Every thread gets the same d.
__device__ void build_dist(const float* z, int V, const RowParams& p, Dist& d, Shared& sh) {
  __shared__ Dist sd;
  __shared__ unsigned int hist[256];
  __shared__ double mhist[256];
  __shared__ uint32_t prefix_sh;
  __shared__ int rank_sh;
  __shared__ double before_sh;
  const bool al = is_aligned(z);
  // Maximum, its first index, the first non-finite token and, in the same pass, the
  // thread's sum of exp((z - m) / T) at its running maximum m (online softmax), which
  // is the total where no filter applies: one pass over the row fewer.
  const bool greedy = p.temperature == 0;
  const float itf = greedy ? 1.0f : float(fmin(1.0 / p.temperature, double(FLT_MAX)));
  float m = -INFINITY;
  int mi = INT_MAX, bad = INT_MAX;
  double ws = 0;
  for_tiles(z, V, al, [&](int x0, const Four& f) {
    float fs = 0;  // this tile's four, at m
    for (int j = 0; j < f.n; ++j) {
      const float v = f.v[j];
      if (!isfinite(v)) {
        bad = min(bad, x0 + j);
        continue;
      }
      // Greedy rows need only the maximum.
      if (greedy ? v > m : online_add(v, itf, m, ws, fs)) {
        m = v;
        mi = x0 + j;
      }
    }
    ws += fs;
  });
  const float thread_max = m;
  // Block max of (m, -index).
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_down_sync(0xffffffffu, m, o);
    const int oi = __shfl_down_sync(0xffffffffu, mi, o);
    if (om > m || (om == m && oi < mi)) {
      m = om;
      mi = oi;
    }
  }
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sh.f[wid] = m;
    sh.i[wid] = mi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float bm = sh.f[0];
    int bi = sh.i[0];
    for (int i = 1; i < kWarps; ++i)
      if (sh.f[i] > bm || (sh.f[i] == bm && sh.i[i] < bi)) {
        bm = sh.f[i];
        bi = sh.i[i];
      }
    sd.zmax = bm;
    sd.argmax = bi;
  }
  __syncthreads();
  bad = block_min_int(bad, sh);
  if (threadIdx.x == 0) {
    sd.bad = bad;
    sd.greedy = greedy;
    sd.inv_t = itf;
    sd.cut_key = 0;
    sd.cut_index = V - 1;
    sd.min_w = 0;
    sd.total = 1;
  }
  __syncthreads();
  if (sd.bad != INT_MAX || sd.greedy) {
    d = sd;
    __syncthreads();
    return;
  }
  const bool top_k = p.top_k >= 1 && p.top_k < V, top_p = p.top_p < 1;
  if (top_k) {
    // Radix select of the k-th key (descending), 8 bits per round.
    if (threadIdx.x == 0) {
      prefix_sh = 0;
      rank_sh = int(p.top_k);
    }
    for (int round = 0; round < 4; ++round) {
      const int shift = 24 - 8 * round;
      const uint32_t mask = round == 0 ? 0u : 0xffffffffu << (shift + 8);
      for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      const uint32_t prefix = prefix_sh;
      for (int base = 0; base < V; base += kTile) {
        const Four f = load4(z, V, base + 4 * threadIdx.x, al);
        for (int j = 0; j < f.n; ++j) {
          const uint32_t k = order_key(f.v[j]);
          if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int r = rank_sh, b = 255;
        for (; b > 0 && int(hist[b]) < r; --b) r -= int(hist[b]);
        prefix_sh = prefix | (uint32_t(b) << shift);
        rank_sh = r;
      }
      __syncthreads();
    }
    const uint32_t key = prefix_sh;
    const int r = rank_sh;  // the r-th of the tokens with this key, in index order
    const int idx = nth_equal(z, V, al, key, r, [](int, float) { return true; }, sh);
    if (threadIdx.x == 0) {
      sd.cut_key = key;
      sd.cut_index = idx;
    }
    __syncthreads();
  }
  if (top_p) {
    // The mass left by top-k, then the shortest prefix with mass >= top_p of it.
    Dist cur = sd;
    double s = 0;
    for (int base = 0; base < V; base += kTile) {
      const int x0 = base + 4 * threadIdx.x;
      const Four f = load4(z, V, x0, al);
      for (int j = 0; j < f.n; ++j) s += cur.w(x0 + j, f.v[j]);
    }
    const double target = p.top_p * block_sum(s, sh);
    if (threadIdx.x == 0) {
      prefix_sh = 0;
      before_sh = 0;  // mass of the kept tokens with a larger key than the current prefix
    }
    for (int round = 0; round < 4; ++round) {
      const int shift = 24 - 8 * round;
      const uint32_t mask = round == 0 ? 0u : 0xffffffffu << (shift + 8);
      for (int i = threadIdx.x; i < 256; i += kThreads) mhist[i] = 0;
      __syncthreads();
      const uint32_t prefix = prefix_sh;
      for (int base = 0; base < V; base += kTile) {
        const int x0 = base + 4 * threadIdx.x;
        const Four f = load4(z, V, x0, al);
        for (int j = 0; j < f.n; ++j) {
          const uint32_t k = order_key(f.v[j]);
          if ((k & mask) != prefix) continue;
          const double wx = cur.w(x0 + j, f.v[j]);
          if (wx > 0) atomicAdd(&mhist[(k >> shift) & 255u], wx);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        double acc = before_sh;
        int b = 255, last = -1;
        for (; b >= 0; --b) {
          if (mhist[b] <= 0) continue;
          last = b;
          if (acc + mhist[b] >= target) break;
          acc += mhist[b];
        }
        if (b < 0) {  // rounding: the whole mass falls short of the target; keep all
          b = last < 0 ? 0 : last;
          acc -= last < 0 ? 0 : mhist[b];
        }
        prefix_sh = prefix | (uint32_t(b) << shift);
        before_sh = acc;
      }
      __syncthreads();
    }
    const uint32_t key = prefix_sh;
    // Tokens with this key share one weight: keep the first r of them (index order).
    const float zk = [&] {
      const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
      return __uint_as_float(u);
    }();
    const double wk = sd.weight_of(zk);
    double need = (target - before_sh) / wk;
    int r = need <= 1 ? 1 : int(ceil(need));
    int count = 0;
    for (int base = 0; base < V; base += kTile) {
      const int x0 = base + 4 * threadIdx.x;
      const Four f = load4(z, V, x0, al);
      for (int j = 0; j < f.n; ++j) count += order_key(f.v[j]) == key && cur.w(x0 + j, f.v[j]) > 0;
    }
    count = block_sum_int(count, sh);
    if (r > count) r = count;
    if (r < 1) r = 1;
    const int idx = nth_equal(z, V, al, key, r, [&](int x, float v) { return cur.w(x, v) > 0; }, sh);
    if (threadIdx.x == 0) {
      sd.cut_key = key;
      sd.cut_index = idx;
    }
    __syncthreads();
  }
  if (!top_k && !top_p && p.min_p <= 0) {
    // No filter: the online sums, each moved to the row's maximum.
    const double t = block_sum(thread_max == -INFINITY ? 0.0 : ws * double(sd.weight_of(thread_max)), sh);
    if (threadIdx.x == 0) sd.total = t;
    __syncthreads();
    d = sd;
    __syncthreads();
    return;
  }
  if (p.min_p > 0 && threadIdx.x == 0) sd.min_w = p.min_p;
  __syncthreads();
  Dist cur = sd;
  double s = 0;
  for (int base = 0; base < V; base += kTile) {
    const int x0 = base + 4 * threadIdx.x;
    const Four f = load4(z, V, x0, al);
    for (int j = 0; j < f.n; ++j) s += cur.w(x0 + j, f.v[j]);
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) sd.total = s;
  __syncthreads();
  d = sd;
  __syncthreads();
}

// Inverse CDF in index order: the smallest x with sum_{y <= x} w(y) > target (w from
// weight(x, z) over the row z); the last token of positive weight where rounding leaves
// the target unreached. -1 if no weight is positive.
template <class Weight>
__device__ int inverse_cdf(const float* z, int V, double target, Weight weight, Shared& sh) {
  __shared__ int found;
  const bool al = is_aligned(z);
  if (threadIdx.x == 0) found = -1;
  __syncthreads();
  double cum = 0;
  int last_pos = -1;
  for (int base = 0; base < V; base += kTile) {
    const int x0 = base + 4 * threadIdx.x;
    const Four f = load4(z, V, x0, al);
    double wv[4], s = 0;
    for (int j = 0; j < 4; ++j) {
      wv[j] = j < f.n ? weight(x0 + j, f.v[j]) : 0.0;
      s += wv[j];
      if (wv[j] > 0) last_pos = x0 + j;
    }
    double total;
    const double before = block_scan(s, &total, sh);
    if (cum + total > target) {
      double c = cum + before;
      if (c <= target && c + s > target) {
        int pick = -1;
        for (int j = 0; j < f.n; ++j) {
          if (wv[j] <= 0) continue;
          c += wv[j];
          pick = x0 + j;
          if (c > target) break;
        }
        found = pick;
      }
      __syncthreads();
      if (found >= 0) break;
    }
    cum += total;
  }
  __syncthreads();
  const int f = found;
  if (f >= 0) return f;
  return block_max_int(last_pos, sh);
}

__device__ double uniform(uint64_t seed, uint64_t pos, uint32_t domain) {
  // philox.h, as device code.
  uint32_t c0 = uint32_t(pos), c1 = uint32_t(pos >> 32), c2 = 0, c3 = domain;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  const uint64_t k = (uint64_t(c0 >> 6) << 26) | uint64_t(c1 >> 6);
  return double(2 * k + 1) * 0x1p-53;
}

// ---- kernels ----

// build_dist of the row at flat offset `first` (block-wide). A row holding a non-finite
// logit is flagged in *bad (the smallest flat index wins) and gives false.
__device__ bool row_dist(const float* z, int V, const RowParams& p, size_t first, Dist& d, Shared& sh,
                         long long* bad) {
  build_dist(z, V, p, d, sh);
  if (d.bad == INT_MAX) return true;
  if (threadIdx.x == 0) atomicMin(bad, (long long)(first + d.bad));
  return false;
}

__global__ void __launch_bounds__(kThreads, kMinBlocks)
k_sample(const float* logits, int V, const RowParams* params, int nparams, const uint64_t* seeds,
         const uint64_t* offsets, int32_t* out, long long* bad) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const float* z = logits + size_t(r) * V;
  Dist d;
  if (!row_dist(z, V, params[nparams == 1 ? 0 : r], size_t(r) * V, d, sh, bad)) return;
  if (d.greedy) {
    if (threadIdx.x == 0) out[r] = d.argmax;
    return;
  }
  const double u = uniform(seeds[r], offsets ? offsets[r] : 0, rng::kSample);
  const int x = inverse_cdf(z, V, u * d.total, [&](int x, float v) { return d.w(x, v); }, sh);
  if (threadIdx.x == 0) out[r] = x >= 0 ? x : d.argmax;
}

__global__ void __launch_bounds__(kThreads, kMinBlocks)
k_probabilities(const float* logits, int V, const RowParams* params, int nparams, float* out,
                long long* bad) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const float* z = logits + size_t(r) * V;
  Dist d;
  if (!row_dist(z, V, params[nparams == 1 ? 0 : r], size_t(r) * V, d, sh, bad)) return;
  float* o = out + size_t(r) * V;
  const float scale = float(1.0 / d.total);
  for (int x = threadIdx.x; x < V; x += kThreads) o[x] = d.wf(x, z[x]) * scale;
}

// p(x) and q(x) in float, as the CPU's min_sum and resid_sum kernels take them.
struct PairScale {
  float a, b;  // 1 / P.total, 1 / Q.total
  __device__ PairScale(const Dist& P, const Dist& Q) : a(float(1.0 / P.total)), b(float(1.0 / Q.total)) {}
};

// sum_x min(p(x), q(x)) of two rows' distributions and, where `resid` is given, the
// residual mass sum_x max(p(x) - q(x), 0), in one pass over both rows.
__device__ double overlap(const float* zp, const float* zq, int V, const Dist& P, const Dist& Q, Shared& sh,
                          double* resid = nullptr) {
  const PairScale k(P, Q);
  const bool al = is_aligned(zp) && is_aligned(zq);
  double s = 0, r = 0;
  for_tiles2(zp, zq, V, al, [&](int x0, const Four& fp, const Four& fq) {
    float sm = 0, sr = 0;
    for (int j = 0; j < fp.n; ++j) {
      const float p = P.wf(x0 + j, fp.v[j]) * k.a, q = Q.wf(x0 + j, fq.v[j]) * k.b;
      sm += fminf(p, q);
      sr += fmaxf(p - q, 0.0f);
    }
    s += sm;
    r += sr;
  });
  if (resid) *resid = block_sum(r, sh);
  return block_sum(s, sh);
}

// One block per (b, i), i = 0..G: the acceptance of drafted token i (i < L) and its
// residual token if rejected, or the bonus token at i = L.
__global__ void __launch_bounds__(kThreads, kMinBlocks)
k_verify(const float* target, const float* draft, const int32_t* tokens, const int32_t* lengths, int G,
         int V, const RowParams* tp, int ntp, const RowParams* dp, int ndp, const uint64_t* seeds,
         const uint64_t* offsets, uint8_t* accept, int32_t* candidate, float* accept_prob,
         float* expected, long long* bad) {
  __shared__ Shared sh;
  const int b = blockIdx.x / (G + 1), i = blockIdx.x % (G + 1);
  const int L = lengths ? lengths[b] : G;
  if (i > L) return;
  const uint64_t pos = (offsets ? offsets[b] : 0) + uint64_t(i), seed = seeds[b];
  const float* zt = target + (size_t(b) * (G + 1) + i) * V;
  Dist P;
  if (!row_dist(zt, V, tp[ntp == 1 ? 0 : b], (size_t(b) * (G + 1) + i) * V, P, sh, &bad[0])) return;
  const double u_emit = uniform(seed, pos, rng::kEmit);
  auto sample_p = [&] {
    if (P.greedy) return P.argmax;
    const int x = inverse_cdf(zt, V, u_emit * P.total, [&](int x, float v) { return P.w(x, v); }, sh);
    return x >= 0 ? x : P.argmax;
  };
  if (i == L) {
    const int x = sample_p();
    if (threadIdx.x == 0) candidate[b * (G + 1) + i] = x;
    return;
  }
  const float* zd = draft + (size_t(b) * G + i) * V;
  Dist Q;
  if (!row_dist(zd, V, dp[ndp == 1 ? 0 : b], (size_t(b) * G + i) * V, Q, sh, &bad[1])) return;
  const int x = tokens[b * G + i];
  const double px = P.w(x, zt[x]) / P.total, qx = Q.w(x, zd[x]) / Q.total;
  const double ratio = qx > 0 ? fmin(1.0, px / qx) : (px > 0 ? 1.0 : 0.0);
  double rs;
  const double ov = overlap(zt, zd, V, P, Q, sh, &rs);
  const bool ok = uniform(seed, pos, rng::kAccept) < ratio;
  if (threadIdx.x == 0) {
    accept_prob[b * G + i] = float(ratio);
    expected[b * G + i] = float(fmin(1.0, fmax(0.0, ov)));
    accept[b * (G + 1) + i] = ok;
  }
  if (ok) return;
  const PairScale k(P, Q);
  auto resid = [&](int y, float v) { return double(fmaxf(P.wf(y, v) * k.a - Q.wf(y, zd[y]) * k.b, 0.0f)); };
  int c;
  if (rs > kResidualFloor) {
    c = inverse_cdf(zt, V, u_emit * rs, resid, sh);
    if (c < 0) c = sample_p();
  } else {
    c = sample_p();
  }
  if (threadIdx.x == 0) candidate[b * (G + 1) + i] = c;
}

__global__ void k_verify_finish(const int32_t* dtokens, const int32_t* lengths, int B, int G, const uint8_t* accept,
                                const int32_t* candidate, int32_t* tokens, int32_t* accepted, int32_t* emitted,
                                float* accept_prob, float* expected) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const int L = lengths ? lengths[b] : G;
  int n = 0;
  while (n < L && accept[b * (G + 1) + n]) ++n;
  int32_t* tok = tokens + b * (G + 1);
  for (int i = 0; i < n; ++i) tok[i] = dtokens[b * G + i];
  tok[n] = candidate[b * (G + 1) + n];
  for (int i = n + 1; i <= G; ++i) tok[i] = -1;
  accepted[b] = n;
  emitted[b] = n + 1;
  for (int i = L; i < G; ++i) accept_prob[b * G + i] = expected[b * G + i] = __int_as_float(0x7fc00000);
}

__global__ void __launch_bounds__(kThreads, kMinBlocks)
k_acceptance(const float* target, const float* draft, int V, const RowParams* tp, int ntp,
             const RowParams* dp, int ndp, float* out, long long* bad) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const float* zt = target + size_t(r) * V;
  const float* zd = draft + size_t(r) * V;
  Dist P, Q;
  if (!row_dist(zt, V, tp[ntp == 1 ? 0 : r], size_t(r) * V, P, sh, &bad[0])) return;
  if (!row_dist(zd, V, dp[ndp == 1 ? 0 : r], size_t(r) * V, Q, sh, &bad[1])) return;
  // Greedy rows have no weights on the CPU either: their one-hot is used directly.
  const double ov = overlap(zt, zd, V, P, Q, sh);
  if (threadIdx.x == 0) out[r] = float(fmin(1.0, fmax(0.0, ov)));
}

// ---- KD (kd.h), in double per token ----

// e^r - 1 - r, p(e^r - 1 - r) written as q - p - p r away from 0 (no overflow).
__device__ double bregman_term(double p, double q, double r) {
  if (fabs(r) < 1e-3) return p * r * r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120))));
  return (q - p) - p * r;
}

// a - log1p(a), a > -1, without cancellation near 0.
__device__ double a_minus_log1p(double a) {
  if (fabs(a) < 1e-3) return a * a * (0.5 - a * (1.0 / 3 - a * (0.25 - a * 0.2)));
  return a - log1p(a);
}

__global__ void __launch_bounds__(kThreads, kKdMinBlocks)
k_kd(const float* teacher, const float* student, int V, int divergence, double T, double beta,
     const uint8_t* mask, double t2, double gscale, double* per_row, float* grad, long long* bad) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const float* zt = teacher + size_t(r) * V;
  const float* zs = student + size_t(r) * V;
  float* g = grad ? grad + size_t(r) * V : nullptr;
  if (mask && mask[r] == 0) {
    if (g)
      for (int x = threadIdx.x; x < V; x += kThreads) g[x] = 0.0f;
    if (threadIdx.x == 0) per_row[r] = 0;
    return;
  }
  const double inv_t = 1.0 / T;
  // One pass: maxima, non-finite tokens and, at each thread's running maxima, its sums
  // of float exponentials (online softmax), accumulated in double. An error e in a
  // log-sum cancels from the divergence to first order (the Bregman terms sum to
  // KL + O(e KL)); double exps here cost as much as the rest of the kernel.
  const bool al = is_aligned(zt) && is_aligned(zs);
  const float inv_tf = float(inv_t);
  float mt = -INFINITY, ms = -INFINITY;
  int bt = INT_MAX, bs = INT_MAX;
  double st = 0, ss = 0;
  auto online = [&](float v, int x, float& m, int& b, double& s, float& fs) {
    if (!isfinite(v)) b = min(b, x);
    else online_add(v, inv_tf, m, s, fs);
  };
  for_tiles2(zt, zs, V, al, [&](int x0, const Four& ft, const Four& fs4) {
    float a = 0, b = 0;
    for (int j = 0; j < ft.n; ++j) {
      online(ft.v[j], x0 + j, mt, bt, st, a);
      online(fs4.v[j], x0 + j, ms, bs, ss, b);
    }
    st += a;
    ss += b;
  });
  bt = block_min_int(bt, sh);
  bs = block_min_int(bs, sh);
  if (bt != INT_MAX || bs != INT_MAX) {
    if (threadIdx.x == 0) {
      if (bt != INT_MAX) atomicMin(&bad[0], (long long)(size_t(r) * V + bt));
      else atomicMin(&bad[1], (long long)(size_t(r) * V + bs));
    }
    return;
  }
  const float tmt = mt, tms = ms;  // this thread's maxima
  for (int o = 16; o > 0; o >>= 1) {
    mt = fmaxf(mt, __shfl_down_sync(0xffffffffu, mt, o));
    ms = fmaxf(ms, __shfl_down_sync(0xffffffffu, ms, o));
  }
  __shared__ float wmt[kWarps], wms[kWarps];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) {
    wmt[wid] = mt;
    wms[wid] = ms;
  }
  __syncthreads();
  mt = wmt[0];
  ms = wms[0];
  for (int i = 1; i < kWarps; ++i) {
    mt = fmaxf(mt, wmt[i]);
    ms = fmaxf(ms, wms[i]);
  }
  st = tmt == -INFINITY ? 0.0 : st * double(expf((tmt - mt) * inv_tf));
  ss = tms == -INFINITY ? 0.0 : ss * double(expf((tms - ms) * inv_tf));
  const double lst = log(block_sum(st, sh)), lss = log(block_sum(ss, sh));
  // Per token: log p, log q, r = log q - log p from the logits' exact offsets.
  auto token = [&](float a, float b, double* p, double* q, double* rr) {
    const double dt = (double(a) - mt) * inv_t, ds = (double(b) - ms) * inv_t;
    const double lp = dt - lst, lq = ds - lss;
    *p = exp(lp);
    *q = exp(lq);
    *rr = (ds - dt) + (lst - lss);
  };
  double s0 = 0, s1 = 0;  // the divergence, and the gradient's row constant
  for_tiles2(zt, zs, V, al, [&](int x0, const Four& ft, const Four& fs4) {
    for (int j = 0; j < ft.n; ++j) {
      double p, q, rr;
      token(ft.v[j], fs4.v[j], &p, &q, &rr);
      switch (divergence) {
        case 0: s0 += bregman_term(p, q, rr); break;
        case 1:
          s0 += bregman_term(q, p, -rr);
          s1 += q * rr;
          break;
        case 2: {
          // beta KL(p||m) + (1 - beta) KL(q||m) in Bregman form; h = log(q/m).
          const double a = rr > 30 ? INFINITY : (1 - beta) * expm1(rr);    // m/p - 1
          const double bq = rr < -30 ? INFINITY : beta * expm1(-rr);       // m/q - 1
          const double tp = isinf(a) ? (1 - beta) * (q - p) - p * (log(1 - beta) + rr) : p * a_minus_log1p(a);
          const double tq = isinf(bq) ? beta * (p - q) - q * (log(beta) - rr) : q * a_minus_log1p(bq);
          s0 += beta * tp + (1 - beta) * tq;
          const double h = isinf(bq) ? -(log(beta) - rr) : -log1p(bq);
          s1 += q * h;
          break;
        }
        default: {
          const double mag = fmax(p, q) * -expm1(-fabs(rr));
          s0 += 0.5 * mag;
          s1 += rr > 0 ? 0.5 * q : rr < 0 ? -0.5 * q : 0.0;
          break;
        }
      }
    }
  });
  const double loss = block_sum(s0, sh);
  const double C = block_sum(s1, sh);
  if (threadIdx.x == 0) per_row[r] = loss * t2;
  if (!g) return;
  for_tiles2(zt, zs, V, al, [&](int x0, const Four& ft, const Four& fs4) {
    for (int j = 0; j < ft.n; ++j) {
      const int x = x0 + j;
      double p, q, rr, v;
      token(ft.v[j], fs4.v[j], &p, &q, &rr);
      switch (divergence) {
        case 0: v = q - p; break;
        case 1: v = q * (rr - C); break;
        case 2: {
          const double bq = rr < -30 ? INFINITY : beta * expm1(-rr);
          const double h = isinf(bq) ? -(log(beta) - rr) : -log1p(bq);
          v = (1 - beta) * q * (h - C);
          break;
        }
        default: v = q * ((rr > 0 ? 0.5 : rr < 0 ? -0.5 : 0.0) - C); break;
      }
      g[x] = float(v * gscale);
    }
  });
}

// ---- host side ----

std::mutex& gpu_mutex() {
  static std::mutex m;
  return m;
}

// Device memory for one call, freed on scope exit.
struct DeviceBuffers {
  std::vector<void*> ptrs;
  template <class T>
  T* alloc(size_t n) {
    void* p = nullptr;
    if (n == 0) n = 1;
    check(cudaMalloc(&p, n * sizeof(T)), "cudaMalloc");
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
  template <class T>
  T* upload(const T* host, size_t n) {
    T* d = alloc<T>(n);
    if (host && n) check(cudaMemcpy(d, host, n * sizeof(T), cudaMemcpyHostToDevice), "copy to device");
    return d;
  }
  ~DeviceBuffers() {
    for (void* p : ptrs) cudaFree(p);
  }
};

// Events around the three phases of a call.
struct Phases {
  cudaEvent_t e[4];
  cuda::Timing* t;
  explicit Phases(cuda::Timing* timing) : t(timing) {
    for (auto& x : e) check(cudaEventCreate(&x), "cudaEventCreate");
    cudaEventRecord(e[0]);
  }
  void mark(int i) { cudaEventRecord(e[i]); }
  int repeats() const { return t && t->kernel_repeats > 1 ? t->kernel_repeats : 1; }
  ~Phases() {
    if (t) {
      cudaEventSynchronize(e[3]);
      float a = 0, b = 0, c = 0;
      cudaEventElapsedTime(&a, e[0], e[1]);
      cudaEventElapsedTime(&b, e[1], e[2]);
      cudaEventElapsedTime(&c, e[2], e[3]);
      t->copy_in_ms = a;
      t->kernel_ms = b / float(repeats());
      t->copy_out_ms = c;
    }
    for (auto& x : e) cudaEventDestroy(x);
  }
};

std::vector<RowParams> row_params(ParamsView v) {
  std::vector<RowParams> out(v.size);
  for (size_t i = 0; i < v.size; ++i) out[i] = RowParams{v.data[i].temperature, (long long)v.data[i].top_k, v.data[i].top_p, v.data[i].min_p};
  return out;
}

void launched(const char* what) {
  check(cudaGetLastError(), what);
}

[[noreturn]] void throw_nonfinite(const std::string& name, const std::string& where, size_t flat, float value) {
  throw Error(Code::Value, name + "[" + std::to_string(flat) + "] (" + where + "): expected a finite logit, received " +
                               js_number(value));
}

// Two device slots for the first non-finite flat index of two inputs (LLONG_MAX: none),
// written by the kernels with atomicMin.
struct BadFlags {
  long long* dev;
  explicit BadFlags(DeviceBuffers& m) : dev(m.alloc<long long>(2)) {
    const long long none[2] = {LLONG_MAX, LLONG_MAX};
    check(cudaMemcpy(dev, none, sizeof(none), cudaMemcpyHostToDevice), "copy to device");
  }
  void read(long long first[2]) const {
    check(cudaMemcpy(first, dev, 2 * sizeof(long long), cudaMemcpyDeviceToHost), "copy to host");
  }
  // For inputs of rows of V logits: throws "name[flat] (row r, token t)" for the first
  // flagged one (names[k], data[k]; data[1] unused when names[1] is null).
  void throw_rows(const char* const names[2], const float* const data[2], size_t V) const {
    long long first[2];
    read(first);
    for (int k = 0; k < 2; ++k)
      if (names[k] && first[k] != LLONG_MAX) {
        const size_t f = size_t(first[k]);
        throw_nonfinite(names[k], "row " + std::to_string(f / V) + ", token " + std::to_string(f % V), f, data[k][f]);
      }
  }
};

void set_device() { check(cudaSetDevice(0), "cudaSetDevice"); }

}  // namespace

BackendStatus cuda_status() {
  static const BackendStatus status = [] {
    BackendStatus s;
    s.built = true;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver) {
      s.reason = "no driver (or a driver older than this CUDA runtime)";
    } else if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
      s.reason = "no device";
    } else if (e != cudaSuccess) {
      s.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
    } else {
      cudaDeviceProp p;
      if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
        s.reason = "cudaGetDeviceProperties failed";
      } else if (p.major * 10 + p.minor < 75) {
        s.reason = "device 0 has compute capability " + std::to_string(p.major) + "." + std::to_string(p.minor) +
                   " (7.5 or newer needed)";
      } else {
        s.available = true;
        s.device = std::string(p.name) + " (compute capability " + std::to_string(p.major) + "." +
                   std::to_string(p.minor) + ")";
      }
    }
    cudaGetLastError();  // clear a sticky error of the query
    return s;
  }();
  return status;
}

namespace cuda {

void sample(const SampleArgs& a, int32_t* out, Timing* timing) {
  if (a.rows == 0) return;
  std::lock_guard<std::mutex> lock(gpu_mutex());
  set_device();
  const size_t R = a.rows, V = a.vocab;
  const std::vector<RowParams> rp = row_params(a.params);
  DeviceBuffers m;
  Phases ph(timing);
  const float* z = m.upload(a.logits, R * V);
  const RowParams* p = m.upload(rp.data(), rp.size());
  const uint64_t* seeds = m.upload(a.seeds, R);
  const uint64_t* offsets = a.offsets ? m.upload(a.offsets, R) : nullptr;
  int32_t* o = m.alloc<int32_t>(R);
  const BadFlags bad(m);
  ph.mark(1);
  for (int rep = 0; rep < ph.repeats(); ++rep) {
    k_sample<<<unsigned(R), kThreads>>>(z, int(V), p, int(rp.size()), seeds, offsets, o, bad.dev);
    launched("sample kernel");
  }
  ph.mark(2);
  const char* names[2] = {"logits", nullptr};
  const float* data[2] = {a.logits, nullptr};
  bad.throw_rows(names, data, V);
  check(cudaMemcpy(out, o, R * sizeof(int32_t), cudaMemcpyDeviceToHost), "copy to host");
  ph.mark(3);
}

void probabilities(const float* logits, size_t rows, size_t vocab, ParamsView params, float* out, Timing* timing) {
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(gpu_mutex());
  set_device();
  const size_t R = rows, V = vocab;
  const std::vector<RowParams> rp = row_params(params);
  DeviceBuffers m;
  Phases ph(timing);
  const float* z = m.upload(logits, R * V);
  const RowParams* p = m.upload(rp.data(), rp.size());
  float* o = m.alloc<float>(R * V);
  const BadFlags bad(m);
  ph.mark(1);
  for (int rep = 0; rep < ph.repeats(); ++rep) {
    k_probabilities<<<unsigned(R), kThreads>>>(z, int(V), p, int(rp.size()), o, bad.dev);
    launched("probabilities kernel");
  }
  ph.mark(2);
  const char* names[2] = {"logits", nullptr};
  const float* data[2] = {logits, nullptr};
  bad.throw_rows(names, data, V);
  check(cudaMemcpy(out, o, R * V * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
  ph.mark(3);
}

void verify(const VerifyArgs& a, const VerifyOut& o, Timing* timing) {
  const size_t B = a.batch, G = a.gamma, V = a.vocab;
  if (B == 0) return;
  std::lock_guard<std::mutex> lock(gpu_mutex());
  set_device();
  const std::vector<RowParams> tp = row_params(a.target), dp = row_params(a.draft);
  DeviceBuffers m;
  Phases ph(timing);
  const float* zt = m.upload(a.target_logits, B * (G + 1) * V);
  const float* zd = m.upload(a.draft_logits, B * G * V);
  const int32_t* dtok = m.upload(a.draft_tokens, B * G);
  const int32_t* len = a.draft_lengths ? m.upload(a.draft_lengths, B) : nullptr;
  const RowParams* dtp = m.upload(tp.data(), tp.size());
  const RowParams* ddp = m.upload(dp.data(), dp.size());
  const uint64_t* seeds = m.upload(a.seeds, B);
  const uint64_t* offsets = a.offsets ? m.upload(a.offsets, B) : nullptr;
  uint8_t* acc = m.alloc<uint8_t>(B * (G + 1));
  check(cudaMemset(acc, 0, B * (G + 1)), "cudaMemset");
  int32_t* cand = m.alloc<int32_t>(B * (G + 1));
  int32_t* tokens = m.alloc<int32_t>(B * (G + 1));
  int32_t* accepted = m.alloc<int32_t>(B);
  int32_t* emitted = m.alloc<int32_t>(B);
  float* aprob = m.alloc<float>(B * G);
  float* expected = m.alloc<float>(B * G);
  const BadFlags bad(m);
  ph.mark(1);
  for (int rep = 0; rep < ph.repeats(); ++rep) {
    k_verify<<<unsigned(B * (G + 1)), kThreads>>>(zt, zd, dtok, len, int(G), int(V), dtp, int(tp.size()), ddp,
                                                  int(dp.size()), seeds, offsets, acc, cand, aprob, expected, bad.dev);
    launched("verify kernel");
    k_verify_finish<<<unsigned((B + 127) / 128), 128>>>(dtok, len, int(B), int(G), acc, cand, tokens, accepted,
                                                        emitted, aprob, expected);
    launched("verify finish kernel");
  }
  ph.mark(2);
  long long first[2];
  bad.read(first);
  if (first[0] != LLONG_MAX) {
    const size_t f = size_t(first[0]), row = f / V, b = row / (G + 1), i = row % (G + 1);
    throw_nonfinite("targetLogits",
                    "batch " + std::to_string(b) + ", position " + std::to_string(i) + ", token " +
                        std::to_string(f % V),
                    f, a.target_logits[f]);
  }
  if (first[1] != LLONG_MAX) {
    const size_t f = size_t(first[1]), row = f / V, b = row / G, i = row % G;
    throw_nonfinite("draftLogits",
                    "batch " + std::to_string(b) + ", position " + std::to_string(i) + ", token " +
                        std::to_string(f % V),
                    f, a.draft_logits[f]);
  }
  check(cudaMemcpy(o.tokens, tokens, B * (G + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost), "copy to host");
  check(cudaMemcpy(o.accepted, accepted, B * sizeof(int32_t), cudaMemcpyDeviceToHost), "copy to host");
  check(cudaMemcpy(o.emitted, emitted, B * sizeof(int32_t), cudaMemcpyDeviceToHost), "copy to host");
  if (G > 0) {
    check(cudaMemcpy(o.accept_prob, aprob, B * G * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
    check(cudaMemcpy(o.expected, expected, B * G * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
  }
  ph.mark(3);
}

void acceptance_rate(const float* target, const float* draft, size_t rows, size_t vocab, ParamsView tpv,
                     ParamsView dpv, float* out, Timing* timing) {
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(gpu_mutex());
  set_device();
  const size_t R = rows, V = vocab;
  const std::vector<RowParams> tp = row_params(tpv), dp = row_params(dpv);
  DeviceBuffers m;
  Phases ph(timing);
  const float* zt = m.upload(target, R * V);
  const float* zd = m.upload(draft, R * V);
  const RowParams* dtp = m.upload(tp.data(), tp.size());
  const RowParams* ddp = m.upload(dp.data(), dp.size());
  float* o = m.alloc<float>(R);
  const BadFlags bad(m);
  ph.mark(1);
  for (int rep = 0; rep < ph.repeats(); ++rep) {
    k_acceptance<<<unsigned(R), kThreads>>>(zt, zd, int(V), dtp, int(tp.size()), ddp, int(dp.size()), o, bad.dev);
    launched("acceptance kernel");
  }
  ph.mark(2);
  const char* names[2] = {"targetLogits", "draftLogits"};
  const float* data[2] = {target, draft};
  bad.throw_rows(names, data, V);
  check(cudaMemcpy(out, o, R * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
  ph.mark(3);
}

double kd_loss(const KdArgs& a, float* per_row, float* grad, Timing* timing) {
  const size_t R = a.rows, V = a.vocab;
  size_t included = 0;
  for (size_t r = 0; r < R; ++r) included += a.mask == nullptr || a.mask[r] != 0;
  if (R == 0) return 0.0;
  std::lock_guard<std::mutex> lock(gpu_mutex());
  set_device();
  const double t2 = a.scale_t2 ? a.temperature * a.temperature : 1.0;
  const double gscale = included ? t2 / (a.temperature * double(included)) : 0.0;
  DeviceBuffers m;
  Phases ph(timing);
  const float* zt = m.upload(a.teacher, R * V);
  const float* zs = m.upload(a.student, R * V);
  const uint8_t* mask = a.mask ? m.upload(a.mask, R) : nullptr;
  double* rows = m.alloc<double>(R);
  float* g = grad ? m.alloc<float>(R * V) : nullptr;
  const BadFlags bad(m);
  ph.mark(1);
  for (int rep = 0; rep < ph.repeats(); ++rep) {
    k_kd<<<unsigned(R), kThreads>>>(zt, zs, int(V), int(a.divergence), a.temperature, a.beta, mask, t2, gscale, rows, g,
                                    bad.dev);
    launched("kd kernel");
  }
  ph.mark(2);
  const char* names[2] = {"teacherLogits", "studentLogits"};
  const float* data[2] = {a.teacher, a.student};
  bad.throw_rows(names, data, V);
  std::vector<double> losses(R);
  check(cudaMemcpy(losses.data(), rows, R * sizeof(double), cudaMemcpyDeviceToHost), "copy to host");
  if (grad) check(cudaMemcpy(grad, g, R * V * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
  ph.mark(3);
  double total = 0;
  for (size_t r = 0; r < R; ++r) {
    per_row[r] = float(losses[r]);
    total += losses[r];
  }
  return included ? total / double(included) : 0.0;
}

double copy_bandwidth(size_t bytes) {
  std::lock_guard<std::mutex> lock(gpu_mutex());
  set_device();
  DeviceBuffers m;
  char* src = m.alloc<char>(bytes);
  char* dst = m.alloc<char>(bytes);
  check(cudaMemset(src, 1, bytes), "cudaMemset");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best = 1e30f;
  for (int rep = 0; rep < 10; ++rep) {
    cudaEventRecord(e0);
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "device copy");
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (ms < best) best = ms;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(bytes) / (double(best) * 1e-3) / 1e9;  // read + write
}

}  // namespace cuda
}  // namespace specula
