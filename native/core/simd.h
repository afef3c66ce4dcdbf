// Leaf kernels over float spans, in one implementation per instruction set, picked at
// run time (cpuid), so that one binary runs on any x86-64 CPU and uses AVX-512 or AVX2
// where the CPU has them. Everything else in core is plain C++ that calls these.
//
// Arithmetic contract: every reduction uses 16 lanes (element j goes to lane j % 16),
// lanes are added in order 0..15 in double at the end, and exp uses one fixed
// polynomial with fused multiply-adds. exp's relative error is below 2.2e-7 + 6e-8 |t|
// for exp(x) = 2^t: about 2.5e-7 where probability mass is, more far out in the tail. The AVX-512 and AVX2 tables therefore return
// bitwise identical results. The portable table (CPUs without AVX2+FMA) uses the same
// order without fused multiply-adds, so its last bits may differ.
#pragma once

#include <cstddef>
#include <cstdint>

namespace specula::simd {

// exp arguments below kExpMin (-126 ln 2) give exactly 0 (the result would be
// subnormal); callers never pass arguments above kExpMax.
constexpr float kExpMin = -87.33654f;
constexpr float kExpMax = 88.0f;

// kd_plain's band around r = 0 for tvd (above any delta it is trusted with; kd.cc).
constexpr float kTvdBand = 1e-6f;

// The divergence kd_plain sums for.
enum class KdPlain { Fkl, Rkl, Tvd };

// One chunk of a (teacher, student) row pair for the KD kernels (kd.h).
struct KdChunk {
  const float* zt;  // teacher logits (n)
  const float* zs;  // student logits (n)
  const float* et;  // teacher exponentials (n), Distribution::e
  const float* es;  // student exponentials (n)
  size_t n;
  float a, b;       // p = et a, q = es b (probabilities, to float rounding)
  double ad, bd;    // the same factors in double, for the sums
  double inv_t, k;  // r = log(q / p) = (zs - zt) inv_t + k (the float path)
  double k_rel;     // r = ((zs - ms) - (zt - mt)) inv_t + k_rel (the double path: exact offsets)
  double mt, lp0;   // log p = (zt - mt) inv_t + lp0 (and ms, lq0 for q): the double path
  double ms, lq0;
  float tau;        // tokens (kd_plain, kd_jsd; whole vectors in the other passes) with p or q
                    // above tau take p, q from double exponentials
  // The same chunk of the row this thread does next, or nullptr: kd_plain and kd_jsd
  // prefetch it into L2 one line per vector, so that the memory bus keeps streaming
  // while pass 2 computes from cache (pass 1 of that row then reads from L2).
  const float* next_zt = nullptr;
  const float* next_zs = nullptr;
  // The gradient kernels write with non-temporal stores (a gradient larger than the caches).
  bool stream = false;
  // et == es == nullptr (the gradient kernels only): they recompute the exponentials as
  // KdPass1 made them, et = exp((zt - st) s) and es = exp((zs - ss) s), the same bits,
  // from the logits alone: half the bytes that would be read back (kd.cc).
  float st = 0, ss = 0, s = 0;
};

// Which exponentials weight kd_pass1's sums of u: the teacher's (fkl: sum p r) or the
// student's (rkl: sum q r).
enum class KdWeight { Teacher, Student };

// KD pass 1 over one chunk of a (teacher, student) row pair: both rows in one sweep of
// the logits (kd.cc). With dt = zt - st and ds = zs - ss: et = exp(dt s), es = exp(ds s)
// as exp_sum computes them, and u = (ds - dt) - cf, so that r = log(q/p) is u/T plus a
// constant of the chunk (kd.cc). Heavy tokens (et > tau_t or es > tau_s) are summed from
// double exponentials and a double u instead, as pass 2 does for its heavy tokens.
struct KdPass1 {
  const float* zt;    // teacher logits (n)
  const float* zs;    // student logits (n)
  size_t n;
  float st, ss;       // the rows' shifts
  float s;            // 1/T as the exponentials use it (build_distribution's)
  double inv_t;       // 1/T for the heavy tokens' double exponentials
  float cf;           // u's constant
  float tau_t, tau_s; // < 1: every token at or above its shift is heavy
  KdWeight weight;
  float* et;          // the exponentials (n each), or both nullptr: not stored
  float* es;
};
struct KdPass1Sums {
  float max_t, max_s;  // max(st, the chunk's largest zt), max(ss, the largest zs)
  bool bad;            // maybe a non-finite logit (confirm with an exact scan)
  double et, es;       // sum et, sum es (light tokens compensated in float, heavy in double)
  double wr, wa;       // sum w u, sum w |u|, w = et (Teacher) or es (Student)
};

// Constants of the JSD kernels for a reference point r0 (kd.cc): with u(r) = 1 - beta +
// beta e^-r and v(r) = beta + (1 - beta) e^r, h(r) = -log u(r) = log(q/m) and
// g(r) = -log v(r) = log(p/m); h(r) - h(r0) = -log(omkh + kh e^{-(r - r0)}) and
// g(r) - g(r0) = -log(omkg + kg e^{r - r0}).
struct JsdRef {
  double r0;
  float kh, omkh, log_kh, log_omkh;
  float kg, omkg, log_kg, log_omkg;
};

// Phi(y, b) = (1 - b) y e^y - V log V, V = b + (1 - b) e^y, the JSD loss terms (kd.cc),
// for b = beta (side 0) and b = 1 - beta (side 1), as Phi = y^2 G(y, b) with G in
// kPieces polynomials per side over -kSpan <= y <= 0: piece i covers u = -y kPieces /
// kSpan in [i, i + 1], where G = sum_k c[k][16 side + i] s^k with s = 2 (u - i) - 1 in
// [-1, 1]. G is analytic within pi of the real axis, so degree 7 on pieces 1.5 wide is
// exact to ~1e-9, below float rounding (kd.cc fits it; the kernels look c up per lane).
// Beyond kSpan the kernels take the direct form, which does not cancel there.
struct JsdTable {
  static constexpr int kPieces = 16, kDegree = 7;
  static constexpr float kSpan = 24.0f;
  alignas(64) float c[kDegree + 1][2 * kPieces];
  float beta;
};

// Weight storage types of the model runtime: float32, IEEE half, bfloat16.
enum class WType : int { F32 = 0, F16 = 1, BF16 = 2 };

// One matrix product of the model runtime (model.cc), dot-product form, on weights as
// stored by Hugging Face (out_features, in_features), row-major:
//   y[t, n] = sum_k x[t, k] w[n, k] (+ bias[n]) (+ the old y[t, n] when accumulate)
// x (rows, k) with row stride ldx; w (N, k) with row stride ldw elements of wtype;
// y (rows, N) with row stride ldy.
// Batch invariance: every y[t, n] is computed the same way whatever `rows`, the column
// range and the thread: 16 lane accumulators, lane l holding sum over k = l (mod 16) in
// increasing k with fused multiply-adds, then reduce16's fixed tree, then + bias, then
// + the old y. So a row's result never depends on the other rows of a batch.
struct MatmulArgs {
  const float* x;
  size_t ldx, rows, k;
  const void* w;
  WType wtype;
  size_t ldw;
  const float* bias;  // (N) or null
  float* y;
  size_t ldy;
  bool accumulate;
  // Optional (null: read x): the rows of x packed for the matrix kernel's one-tile
  // sweeps, by the caller, once per product (pack_x below). The same values in another
  // place, so the same bits.
  const float* xp = nullptr;
};

// When a product of 5..12 rows runs as one tile (simd_model.inc, mm_sweep), every step
// of 16 k loads the same place of every x row. With a row stride that is a multiple of 4
// KiB, those lines fall in one set of the 8-way L1 (with the weight rows' at the same k),
// and each tile read x from L2 again: llama-100m's down projection (k 2048), 9 rows, took
// 4.4-4.8 ms against 2.8-3.2 for one row (a micro-benchmark); packed, 3.1-3.5. Strides
// that spread the rows over the sets (k 768, 1536) measured the same or 5-10% slower
// packed, and 3-4 rows gained nothing in a model. (The portable kernels ignore xp: the
// caller's copy is then wasted, one pass over x beside a scalar product.)
constexpr size_t kPackRowsMin = 5, kPackRowsMax = 12;
inline bool packs_x(const MatmulArgs& a) {
  return a.rows >= kPackRowsMin && a.rows <= kPackRowsMax && a.k >= 16 && (a.ldx * sizeof(float)) % 4096 == 0;
}
// The packed layout: for k < k / 16 * 16, x[t, k] at xp[((k / 16) * rows + t) * 16 + k % 16]
// (a step's vectors of all rows are contiguous); the kernel reads the tail past the last
// multiple of 16 from x. out: room for rows * (k / 16) * 16 floats.
inline void pack_x(const MatmulArgs& a, float* out) {
  const size_t steps = a.k / 16;
  for (size_t s = 0; s < steps; ++s)
    for (size_t t = 0; t < a.rows; ++t) {
      const float* src = a.x + t * a.ldx + s * 16;
      float* dst = out + (s * a.rows + t) * 16;
      for (int i = 0; i < 16; ++i) dst[i] = src[i];
    }
}

// attend(): rows consecutive positions of one sequence, row r attending to positions
// [0, n0 + r), n0 >= 1. Keys in panels of 16 positions (position j, dimension d at
// kp[(j / 16) * hd * 16 + d * 16 + j % 16]: a panel is contiguous, and 16 positions of one
// dimension fill a vector), so that the keys stream as one sequential read; the panels
// up to position n0 + rows - 1 are read whole (lanes past the last position may hold
// anything: their scores are computed and dropped).
struct AttendArgs {
  const float* q;  // row r, head h at q + r * q_row + h * q_head (hd floats)
  size_t q_row, q_head;
  size_t rows, heads, n0;
  const float* kp;
  const float* v;  // position j at v + j * ldv (hd floats)
  size_t ldv, hd;
  float scale;
  float* scores;  // scratch: rows * heads * (n0 + rows - 1 rounded up to 16, + hd) floats
  float* out;     // row r, head h at out + r * out_row + h * out_head (hd floats)
  size_t out_row, out_head;
  // Optional (null: none): keys of the call that comes next on this thread, prefetched
  // into L2 while this one computes its values.
  const float* next_kp;
  size_t next_k_floats;
};

struct Kernels {
  const char* name;  // "avx512", "avx2" or "portable"
  // max(x[0..n)), n >= 1. Sets *bad = true if any element is NaN or +-Inf (else leaves it);
  // may also set it for huge finite values (|x| ~ 1e36), so confirm with an exact scan.
  float (*max)(const float* x, size_t n, bool* bad);
  // out[j] = exp((x[j] - m) * s); returns the sum of out (16-lane order).
  float (*exp_sum)(const float* x, size_t n, float m, float s, float* out);
  // exp_sum and max in one pass: *max_out = max(x), *bad as in max(). The outputs are
  // valid where (x[j] - m) * s <= kExpMax; the caller redoes exp_sum otherwise.
  float (*max_exp_sum)(const float* x, size_t n, float m, float s, float* out, float* max_out, bool* bad);
  // sum_j min(a p[j], b q[j]).
  float (*min_sum)(const float* p, const float* q, size_t n, float a, float b);
  // sum_j max(0, a p[j] - b q[j]).
  float (*resid_sum)(const float* p, const float* q, size_t n, float a, float b);
  // sum_j x[j] (16-lane order).
  float (*sum)(const float* x, size_t n);
  // x[j] *= a.
  void (*scale)(float* x, size_t n, float a);
  // Reads x once and returns a value that depends on every element (bandwidth baseline).
  double (*read)(const float* x, size_t n);
  // KD, pass 2 (sums are added to): every kernel adds sum p, sum q to sums[0..1] and its
  // loss as two sums of non-negative terms, weighted by p and by q, to sums[2..3] (see
  // kd.cc); then rkl adds [sum q r]; jsd adds [sum q (h(r) - h(hr->r0))] when hr is not
  // null; tvd instead uses sums[2..5] for [sum |q - p|, q mass where r > 0, r < 0, r = 0].
  // KD pass 2, the cheap path (kd.cc), for one divergence (KdPlain): sums[0..1] += [sum p,
  // sum q]; then fkl: sums[2], sums[4] += [sum p r, sum p |r|]; rkl: sums[3], sums[5] +=
  // [sum q r, sum q |r|]; tvd: sums[6..10] += [sum (q - p) where r > 0, q mass where r > 0,
  // r < 0, r = 0, sum max(p, q) where |r| < kTvdBand] (the tokens whose side of r = 0 this
  // pass's r, off by delta, may get wrong). Each sums only what its divergence uses.
  void (*kd_plain)(const KdChunk& c, KdPlain d, double* sums);
  // KD pass 1, both rows of a chunk at once (KdPass1): the maxima, the finiteness flag,
  // the exponentials (stored where asked) and their sums, and for fkl and rkl the sums
  // of r0 that make pass 2 unnecessary where nothing cancels (kd.cc). The exponentials
  // are valid where (max - shift) s <= kExpMax; the caller redoes the chunk otherwise.
  // The float sums' error is below 64 eps of the sums of their terms' magnitudes (as
  // kd_plain's).
  void (*kd_pass1)(const KdPass1& c, KdPass1Sums* out);
  void (*kd_fkl)(const KdChunk& c, double* sums);
  void (*kd_rkl)(const KdChunk& c, double* sums);
  void (*kd_tvd)(const KdChunk& c, double* sums);
  void (*kd_jsd)(const KdChunk& c, const JsdTable& js, const JsdRef* hr, double* sums);
  // KD, pass 3 (gradients): fkl g = (q - p) scale; rkl g = q (r - C) scale;
  // tvd g = q c(sign r) scale; jsd g = q (h(r) - h(ref.r0)) scale.
  void (*kd_grad_fkl)(const KdChunk& c, float scale, float* g);
  void (*kd_grad_rkl)(const KdChunk& c, double C, float scale, float* g);
  void (*kd_grad_tvd)(const KdChunk& c, float cpos, float cneg, float czero, float scale, float* g);
  void (*kd_grad_jsd)(const KdChunk& c, const JsdRef& ref, float scale, float* g);

  // Model runtime (model.cc). The fixed 16-lane tree used by every dot product below:
  // s8[i] = l[i] + l[i + 8], s4[i] = s8[i] + s8[i + 4], s2[i] = s4[i] + s4[i + 2],
  // result s2[0] + s2[1] (tree16 in simd_model.inc).
  // matmul: columns [n0, n1) of MatmulArgs (see there). scratch: null, or room for
  // (n1 - n0) * k floats, where f16/bf16 weights are widened once when there are enough
  // rows to reuse them (the same values, so the same bits).
  void (*matmul)(const MatmulArgs& a, size_t n0, size_t n1, float* scratch);
  // Causal attention of `heads` query heads that share one key/value head, for `rows`
  // consecutive positions of one sequence (AttendArgs). For each row r and head h:
  // s[j] = sum_d q[d] k_j[d] (fused multiply-adds in increasing d), p = softmax(s * scale)
  // over the positions j < n0 + r, out = (sum_j e_j v_j, one sum in increasing j) / sum_j e_j.
  // Each (row, head) result is the same whatever `rows` and `heads` (the grouping only
  // lets the query vectors share the key and value loads).
  void (*attend)(const AttendArgs& a);
  // RMSNorm: out = (x / sqrt(mean(x^2) + eps)) * w, n >= 1; the sum of squares as a dot.
  void (*rmsnorm)(const float* x, const float* w, size_t n, float eps, float* out);
  // SwiGLU: out[j] = g[j] / (1 + exp(-g[j])) * u[j].
  void (*silu_mul)(const float* g, const float* u, size_t n, float* out);
  // out[j] = float(src[j]) for stored weights (exact).
  void (*widen)(const void* src, WType type, size_t n, float* out);
  // The FMA ceiling of the benchmarks: iters rounds of independent fused multiply-adds
  // on registers; returns the floating-point operations done (2 per lane per FMA) and
  // stores a value depending on all of them in *sink.
  double (*fma_peak)(size_t iters, double* sink);
};

// Where the matrix kernels' software prefetches put the next tile's weights when a call
// has 1-4 rows (decoding, small verification passes; 5 or more rows always use L2, whose
// activation rows need L1). The results do not depend on it, only the speed:
//   L1: prefetcht0 for 1-4 rows (one row: 16-bit weights only; the hardware prefetcher
//       follows 16 f32 rows well). Measured best on Intel (2026-11-26).
//   L2: prefetcht1 instead. On AMD Zen 4, t0 prefetches of the weight stream cost decoding
//       up to a third of its bandwidth (llama-100m bf16 decode 8.2-9.8 -> 5.4-6.0 ms, 1 x 2
//       8.6-10.1 -> 4.6-6.0 ms; the same with tiles of 6 KiB, so not the 32 KiB L1's size
//       but how the CPU serves t0 prefetches that miss).
// Chosen once per process: SPECULA_PREFETCH=l1|l2, else L2 on AMD CPUs and L1 elsewhere.
enum class PrefetchLevel : int { L1 = 1, L2 = 2 };
PrefetchLevel matmul_prefetch();
// "l1" or "l2", as SPECULA_PREFETCH spells them.
const char* prefetch_name(PrefetchLevel level);
// Overrides the choice from now on (benchmarks compare the two in one run).
void set_matmul_prefetch(PrefetchLevel level);

// The table chosen for this CPU; SPECULA_SIMD=avx512|avx2|portable in the environment
// asks for a lower level (a level the CPU lacks is never chosen).
const Kernels& kernels();
// The table of a level if this CPU supports it, else nullptr. Levels: "avx512", "avx2", "portable".
const Kernels* kernels_for(const char* level);
// Chooses the table used by kernels() from now on; false if the CPU lacks the level.
bool set_level(const char* level);

}  // namespace specula::simd
