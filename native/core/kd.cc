#include "kd.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "distribution.h"
#include "error.h"
#include "simd.h"
#include "thread_pool.h"

namespace specula {
namespace {

[[noreturn]] void throw_nonfinite(const char* name, size_t row, size_t vocab, size_t token, float value) {
  throw Error(Code::Value, std::string(name) + "[" + std::to_string(row * vocab + token) + "] (row " +
                               std::to_string(row) + ", token " + std::to_string(token) +
                               "): expected a finite logit, received " + js_number(value));
}

// log(e^a + e^b), stable.
double log_add_exp(double a, double b) {
  const double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}

// The JSD kernels' constants for a reference point r0 (see simd.h JsdRef).
simd::JsdRef jsd_ref(double r0, double beta) {
  const double lb = std::log(beta), l1b = std::log1p(-beta);
  const double log_u = log_add_exp(l1b, lb - r0);  // u(r0) = 1 - beta + beta e^-r0
  const double log_v = log_add_exp(lb, l1b + r0);  // v(r0) = beta + (1 - beta) e^r0
  simd::JsdRef ref;
  ref.r0 = r0;
  ref.log_kh = float(lb - r0 - log_u);
  ref.log_omkh = float(l1b - log_u);
  ref.kh = float(std::exp(lb - r0 - log_u));
  ref.omkh = float(std::exp(l1b - log_u));
  ref.log_kg = float(l1b + r0 - log_v);
  ref.log_omkg = float(lb - log_v);
  ref.kg = float(std::exp(l1b + r0 - log_v));
  ref.omkg = float(std::exp(lb - log_v));
  return ref;
}

// G(y, b) = Phi(y, b) / y^2 (simd.h JsdTable) in double, y < 0, from the direct form: its
// cancellation near y = 0 costs ~1e-16 / (c |y|), c = Phi's y^2 coefficient, ~1e-11 at
// worst at the nodes below (beta = 0.001), far below float rounding.
double jsd_g(double y, double b) {
  const double em1 = std::expm1(y), w = (1 - b) * em1;
  return ((1 - b) * y * (em1 + 1) - (1 + w) * std::log1p(w)) / (y * y);
}

// The JSD kernels' table for beta: each piece's G interpolated at the Chebyshev points
// of degree kDegree, turned into monomials in s (Phi's relative error with the kernels'
// float evaluation: at most ~3e-7 for beta in [0.001, 0.999], checked against 40-digit
// arithmetic; test_kd checks the losses). Every piece uses the same nodes, so one matrix
// takes a piece's samples of G to its monomial coefficients.
simd::JsdTable jsd_table(double beta) {
  using Table = simd::JsdTable;
  constexpr int n = Table::kDegree + 1;
  const double pi = std::acos(-1.0);
  double cheb[n][n] = {};  // monomial coefficients of T_0 .. T_kDegree
  cheb[0][0] = 1;
  cheb[1][1] = 1;
  for (int k = 2; k < n; ++k)
    for (int m = 0; m < n; ++m) cheb[k][m] = (m > 0 ? 2 * cheb[k - 1][m - 1] : 0) - cheb[k - 2][m];
  // fit[m][j]: the s^m coefficient from the sample at node j, sum over k of T_k's share
  // (the interpolant's Chebyshev coefficient a_k = (2 - [k = 0]) / n sum_j f_j T_k(s_j)).
  double node[n], fit[n][n] = {};
  for (int j = 0; j < n; ++j) {
    node[j] = std::cos(pi * (j + 0.5) / n);
    for (int k = 0; k < n; ++k) {
      const double w = (k == 0 ? 1.0 : 2.0) / n * std::cos(pi * k * (j + 0.5) / n);
      for (int m = 0; m < n; ++m) fit[m][j] += w * cheb[k][m];
    }
  }
  Table t;
  t.beta = float(beta);
  for (int side = 0; side < 2; ++side) {
    const double b = side ? 1 - beta : beta;
    for (int i = 0; i < Table::kPieces; ++i) {
      double f[n];
      for (int j = 0; j < n; ++j) f[j] = jsd_g(-(i + (node[j] + 1) / 2) * double(Table::kSpan) / Table::kPieces, b);
      for (int m = 0; m < n; ++m) {
        double c = 0;
        for (int j = 0; j < n; ++j) c += fit[m][j] * f[j];
        t.c[m][Table::kPieces * side + i] = float(c);
      }
    }
  }
  return t;
}

// Tokens above this probability get double-precision exponentials in pass 2 (simd.h).
constexpr float kPrecise = 1e-3f;

// The part of a core's L2 that a row's data may assume (of 2 MiB here: 1 MiB read twice
// stays ~75% resident, 2 MiB ~35%).
constexpr size_t kL2Budget = size_t(3) << 19;

// What pass 1 found for fkl (the teacher-weighted sums) or rkl (the student-weighted).
struct Pass1Sums {
  double wr = 0;  // sum w r with w = p (fkl) or q (rkl)
  double wa = 0;  // the scale of its float error: sum w (|u| + |cf|) / T over the float sums
  // Each chunk's shifts (the workspace's, valid until the next pass1 on this thread) and
  // the exponentials' scale: a gradient sweep recomputes unstored exponentials from them.
  const double *st = nullptr, *ss = nullptr;
  float s = 0;
};

// Pass 1: one sweep over both rows (simd.h KdPass1) fills P and Q as build_distribution
// does for T > 0 without filters, except that each total is the sum of exactly the
// weights pass 2 uses (float exponentials, double ones for heavy tokens), so that the
// measured sums of p and q are 1 and delta is 0. The exponentials are stored in the
// workspace only where `store` (the gradient and pass 2 read them). It also sums w r,
// w = p (fkl) or q (rkl). In chunk c, r = (ds - dt)/T + kappa_c with kappa_c = log
// (the teacher's total relative to st) - log (the student's relative to ss), known only
// at the end; the kernel sums w u, u = (ds - dt) - cf, with cf = -kappa^ T from the
// totals so far, so that the float terms stay near T r (their float error scales with
// sum w |u|), and (cf/T + kappa_c) sum w is added in double at the end. ds and dt are the
// exponentials' own arguments: r is then exact for the logits that the exponentials saw
// (each off by at most half an ulp of its distance from the shift).
Pass1Sums pass1(const KdArgs& a, size_t row, simd::KdWeight weight, bool store, Distribution& P, Distribution& Q) {
  const size_t V = a.vocab, chunks = chunk_count(V);
  const float* zt = a.teacher + row * V;
  const float* zs = a.student + row * V;
  const simd::Kernels& k = simd::kernels();
  Workspace& ws = workspace();
  const double T = a.temperature, inv_t = 1.0 / T;
  const float s = float(std::min(inv_t, double(FLT_MAX)));  // as build_distribution
  bool checked = false;  // both rows scanned exactly and found finite
  auto check = [&] {
    if (checked) return;
    if (const int64_t x = first_nonfinite(zt, V); x >= 0) throw_nonfinite("teacherLogits", row, V, size_t(x), zt[x]);
    if (const int64_t x = first_nonfinite(zs, V); x >= 0) throw_nonfinite("studentLogits", row, V, size_t(x), zs[x]);
    checked = true;
  };
  for (Distribution* d : {&P, &Q}) {
    d->vocab = V;
    d->argmax = -1;
    d->greedy = false;
    d->weights = true;
    d->scale.resize(chunks);
    d->csum.resize(chunks);
  }
  P.e = store ? ws.row(0, V) : nullptr;
  Q.e = store ? ws.row(1, V) : nullptr;
  P.z = zt;
  Q.z = zs;
  // Per chunk: the shifts, the float constant cf and the sums w u, w |u| (resid_csum is
  // free in KD).
  std::vector<double>& per = ws.resid_csum;
  per.resize(5 * chunks);
  double *sht = per.data(), *shs = sht + chunks, *cfs = shs + chunks, *wr = cfs + chunks, *wa = wr + chunks;

  const size_t len0 = std::min(kChunk, V);
  bool bad = false;
  float st = k.max(zt, len0, &bad), ss = k.max(zs, len0, &bad);  // the shifts: maxima so far
  if (bad) check();
  double pt = 0, qt = 0;  // the totals so far, relative to st and ss
  // A new, larger shift m for a row: its total so far rescaled to it.
  auto lift = [inv_t](float& shift, double& total, float m) {
    total *= std::exp((double(shift) - double(m)) * inv_t);
    shift = m;
  };
  constexpr float kRedo = 20.0f;  // as build_distribution
  P.zmax = st;
  Q.zmax = ss;
  P.zmax_chunk = Q.zmax_chunk = 0;
  // p = et / (the row's total relative to st) <= et / max(1, pt): a token is heavy (p >
  // kPrecise) only if et > kPrecise max(1, pt); so for q. Capped below 1 (KdPass1).
  auto tau = [](double total) { return float(std::min(0.5, kPrecise * std::max(1.0, total))); };
  for (size_t c = 0; c < chunks; ++c) {
    const size_t off = c * kChunk;
    simd::KdPass1 in{zt + off, zs + off, std::min(kChunk, V - off), st, ss, s, inv_t, 0.0f, 0.0f, 0.0f, weight,
                     store ? P.e + off : nullptr, store ? Q.e + off : nullptr};
    simd::KdPass1Sums o;
    for (;;) {
      in.st = st;
      in.ss = ss;
      in.cf = c == 0 ? 0.0f : float((std::log(qt) - std::log(pt)) * T);
      in.tau_t = tau(pt);
      in.tau_s = tau(qt);
      k.kd_pass1(in, &o);
      if (o.bad) check();
      const bool redo_t = (o.max_t - st) * s > kRedo, redo_s = (o.max_s - ss) * s > kRedo;
      if (!redo_t && !redo_s) break;
      // A maximum far above the shift: redo the chunk with it as the new shift.
      if (redo_t) lift(st, pt, o.max_t);
      if (redo_s) lift(ss, qt, o.max_s);
    }
    P.csum[c] = o.et;
    Q.csum[c] = o.es;
    sht[c] = st;
    shs[c] = ss;
    cfs[c] = in.cf;
    wr[c] = o.wr;
    wa[c] = o.wa;
    pt += o.et;
    qt += o.es;
    if (o.max_t > st) {
      lift(st, pt, o.max_t);
      P.zmax = st;
      P.zmax_chunk = c;
    }
    if (o.max_s > ss) {
      lift(ss, qt, o.max_s);
      Q.zmax = ss;
      Q.zmax_chunk = c;
    }
  }
  for (Distribution* d : {&P, &Q}) {
    const double* shift = d == &P ? sht : shs;
    d->total = 0;
    for (size_t c = 0; c < chunks; ++c) {
      d->scale[c] = std::exp((shift[c] - double(d->zmax)) / T);
      d->csum[c] *= d->scale[c];
      d->total += d->csum[c];
    }
  }
  Pass1Sums out;
  out.st = sht;
  out.ss = shs;
  out.s = s;
  const double kappa = std::log(P.total) - std::log(Q.total);  // for shifts at the row maxima
  const Distribution& W = weight == simd::KdWeight::Teacher ? P : Q;
  for (size_t c = 0; c < chunks; ++c) {
    const double kc = kappa + ((double(P.zmax) - sht[c]) - (double(Q.zmax) - shs[c])) * inv_t;
    const double f = W.scale[c] / W.total;  // raw sums to probabilities
    const double mass = W.csum[c] / W.total;  // f times the chunk's raw sum of w
    out.wr += f * inv_t * wr[c] + (cfs[c] * inv_t + kc) * mass;
    out.wa += f * inv_t * wa[c] + inv_t * std::fabs(cfs[c]) * mass;
  }
  return out;
}

// One row: returns its divergence; writes its gradient times `gscale` if g != nullptr.
// `next` is the row this thread does after this one (or a.rows: none), prefetched by
// tvd's and jsd's pass 2 (`first`); `jsd` is the JSD kernels' table (jsd only).
double kd_row(const KdArgs& a, size_t row, size_t next, double gscale, float* g, const simd::JsdTable* jsd) {
  const size_t V = a.vocab;
  const double T = a.temperature, beta = a.beta;
  const float* zt = a.teacher + row * V;
  const float* zs = a.student + row * V;
  Distribution P, Q;
  // fkl and rkl: pass 1 sums both rows in one sweep, and usually that is the loss (see
  // below). tvd and jsd need pass 2's sums, and for them the sampler's pass 1 (one
  // lighter sweep per row) is faster.
  const bool plain = a.divergence == Divergence::FKL || a.divergence == Divergence::RKL;
  const simd::KdWeight weight = a.divergence == Divergence::FKL ? simd::KdWeight::Teacher : simd::KdWeight::Student;
  Pass1Sums r1;
  if (plain) {
    // With the gradient, pass 1 stores the exponentials for the gradient sweep. rkl's
    // sweep recomputes them from the logits instead (simd.h KdChunk) where this row's
    // logits and exponentials (16 bytes per token) would not fit kL2Budget: half the bytes
    // to read back, for two exponentials per token that its light arithmetic (q r) has
    // room for (rkl with the gradient: 256 x 128256 27.2 -> 25.4-25.9 ms, 4096 x 128256
    // 420 -> 386-407). fkl's sweep already takes one per token (q - p) and measured slower.
    const bool recompute = g != nullptr && a.divergence == Divergence::RKL && 16 * V > kL2Budget;
    r1 = pass1(a, row, weight, g != nullptr && !recompute, P, Q);
  } else {
    Workspace& ws = workspace();
    const SamplingParams sp{T, 0, 1.0, 0.0};
    int64_t bad = build_distribution(zt, V, sp, ws.row(0, V), true, P);
    if (bad >= 0) throw_nonfinite("teacherLogits", row, V, size_t(bad), zt[bad]);
    bad = build_distribution(zs, V, sp, ws.row(1, V), true, Q);
    if (bad >= 0) throw_nonfinite("studentLogits", row, V, size_t(bad), zs[bad]);
  }

  // Pass 1 gave log p ~ (zt - mt)/T + lp0 with lp0 = -log(total): exact but for the float
  // rounding of the total. Pass 2 measures it: sum p = e^{-dp}, sum q = e^{-dq} with
  // p, q as computed; then the exact r = log q - log p is r~ + delta, delta = log sum p -
  // log sum q, and every sum below is normalised by the measured sum p or sum q.
  const simd::Kernels& k = simd::kernels();
  const double inv_t = 1.0 / T;
  const double mt = P.zmax, ms = Q.zmax, lp0 = -std::log(P.total), lq0 = -std::log(Q.total);
  // r~ = ((zs - ms) - (zt - mt))/T + K: the logits' offsets from their maxima are exact
  // in double, so r~ carries no rounding of the (possibly large) (mt - ms)/T; the float
  // path, which cannot resolve that anyway, uses (zs - zt)/T + (mt - ms)/T + K.
  const double K = lq0 - lp0;
  // A gradient larger than the caches is written past them (simd.h KdChunk::stream):
  // what it would evict (the logits, the next rows) is what this pass reads.
  const bool a_big_gradient = g != nullptr && a.rows * V * sizeof(float) > (size_t(8) << 20);
  // Chunk c with r = ((zs - ms) - (zt - mt))/T + kk; p and q divided by ps and qs.
  auto chunk = [&](size_t c, double kk, double ps = 1, double qs = 1) {
    const size_t off = c * kChunk;
    const double a = P.scale[c] / P.total / ps, b = Q.scale[c] / Q.total / qs;
    simd::KdChunk ch{zt + off, zs + off, P.e ? P.e + off : nullptr, Q.e ? Q.e + off : nullptr, std::min(kChunk, V - off),
                     float(a), float(b), a, b, inv_t, (mt - ms) * inv_t + kk, kk, mt, lp0, ms, lq0, kPrecise};
    ch.stream = a_big_gradient;
    if (P.e == nullptr) {  // pass1 did not store them (the gradient sweeps only)
      ch.st = float(r1.st[c]);
      ch.ss = float(r1.ss[c]);
      ch.s = r1.s;
    }
    return ch;
  };
  // The first sweep of tvd's and jsd's pass 2 also prefetches the next row, where this
  // row's logits and exponentials and the next row's logits (24 bytes per token) fit
  // kL2Budget; larger rows would evict their own data (V = 128256 measured slower;
  // prefetching the first half of such a row beside one whose exponentials are
  // recomputed measured the same).
  auto first = [&](size_t c, double kk) {
    simd::KdChunk ch = chunk(c, kk);
    if (next < a.rows && 24 * V <= kL2Budget) {
      ch.next_zt = a.teacher + next * V + c * kChunk;
      ch.next_zs = a.student + next * V + c * kChunk;
    }
    return ch;
  };
  const size_t chunks = P.csum.size();
  double s[6] = {0, 0, 0, 0, 0, 0};
  auto delta = [&] { return std::log(s[0]) - std::log(s[1]); };  // r - r~, measured
  double loss = 0;

  // Pass 2. fkl, rkl and tvd first take the cheap path (no transcendental per token):
  // fkl = -sum p r - delta, rkl = sum q r + delta, tvd = Q+ - P+ (the masses on the side
  // r > 0), each normalised by the measured sums. Where their float error is not below
  // 1e-5 of the result (near-identical rows), the row is summed again in Bregman form
  // (simd.h): non-negative O(r^2) terms, weighted by p (s[2]) and q (s[3]), with the exact
  // r = r~ + dl. The Bregman sums are off only by the square of what r is still off by:
  // with r off by d (and p, q normalised by their measured sums), a divergence whose
  // f-form has f''(1) = c (1 for fkl and rkl, beta (1 - beta) for jsd) comes out
  // c d^2 / 2 too large, to relative O(r) terms; that is subtracted (see `bregman`).
  auto bregman = [&](double d, double c) { return s[2] / s[0] + s[3] / s[1] - 0.5 * c * d * d; };
  // Every vector's p and q from double exponentials (not just those with a heavy token):
  // the sums then give delta to double precision, not to the float rounding of pass 1's
  // exponentials (~1e-9 after averaging), which the fkl gradient q - p = p (e^r - 1) of a
  // near-identical row (r ~ 1e-4 and below) would feel.
  auto precise = [](simd::KdChunk ch) {
    ch.tau = -1.0f;
    return ch;
  };
  // The plain sums' float error is up to ~2e-6 of sum w|r| (tail tokens at low T carry
  // exp-argument rounding of ~6e-8 |t|): 2e-6 / 0.2 = 1e-5.
  constexpr double kCancel = 0.2;
  if (plain) {
    // fkl = -sum p r and rkl = sum q r straight from pass 1 (its sums of p and q are 1),
    // where their float error is below 1e-5 of the result; only the gradient sweeps again.
    const double l = a.divergence == Divergence::FKL ? -r1.wr : r1.wr;
    if (std::isfinite(l) && l >= kCancel * r1.wa) {
      // The gradient from cache. Prefetching the next row here as well (first) measured
      // slower: 4096 x 32000 fkl 97.5 -> 102 ms, rkl 84-85 -> 94-97 (2026-11-26).
      if (g)
        for (size_t c = 0; c < chunks; ++c) {
          if (a.divergence == Divergence::FKL) k.kd_grad_fkl(chunk(c, K), float(gscale), g + c * kChunk);
          else k.kd_grad_rkl(chunk(c, K), r1.wr, float(gscale), g + c * kChunk);
        }
      return l;
    }
    if (P.e == nullptr) pass1(a, row, weight, true, P, Q);  // pass 2 reads the exponentials
  }
  switch (a.divergence) {
    case Divergence::FKL:
    case Divergence::RKL:
    case Divergence::TVD: {
      // fkl = -sum p r - delta, rkl = sum q r + delta, tvd = Q+ - P+.
      double t[11] = {0};
      const simd::KdPlain mode = a.divergence == Divergence::FKL   ? simd::KdPlain::Fkl
                                 : a.divergence == Divergence::RKL ? simd::KdPlain::Rkl
                                                                   : simd::KdPlain::Tvd;
      for (size_t c = 0; c < chunks; ++c) k.kd_plain(first(c, K), mode, t);
      const double dl = std::log(t[0]) - std::log(t[1]);
      if (a.divergence == Divergence::FKL) {
        loss = -t[2] / t[0] - dl;
        double dg = dl, sp = t[0], sq = t[1];  // the gradient's delta and normalisation
        if (loss < kCancel * t[4] / t[0]) {
          for (size_t c = 0; c < chunks; ++c) k.kd_fkl(g ? precise(chunk(c, K + dl)) : chunk(c, K + dl), s);
          loss = bregman(delta() - dl, 1.0);
          dg = delta();
          sp = s[0];
          sq = s[1];
        }
        if (g)  // q - p with the exact r and the measured normalisation
          for (size_t c = 0; c < chunks; ++c) k.kd_grad_fkl(chunk(c, K + dg, sp, sq), float(gscale), g + c * kChunk);
      } else if (a.divergence == Divergence::RKL) {
        const double C = t[3] / t[1];  // with r~: r - C is the same with the exact r
        loss = C + dl;
        if (loss < kCancel * t[5] / t[1]) {
          for (size_t c = 0; c < chunks; ++c) k.kd_rkl(chunk(c, K + dl), s);
          loss = bregman(delta() - dl, 1.0);
        }
        if (g)
          for (size_t c = 0; c < chunks; ++c) k.kd_grad_rkl(chunk(c, K), C, float(gscale / t[1]), g + c * kChunk);
      } else {
        double qpos = t[7], qneg = t[8], q0 = t[9];
        const double Pp = qpos - t[6];  // p mass where r > 0
        loss = qpos / t[1] - Pp / t[0];
        // Pass 2 put each token on its side of r = 0 by r~ = r - dl: tokens within |dl|
        // of 0 may be on the wrong one, each off by |q - p| <= max(p, q) |r|. They lie in
        // the band |r~| < kTvdBand (t[10]: their max(p, q) mass) as long as |dl| is well
        // inside it. The gradient's side masses need the sides of the gradient pass's r
        // (r~ + dl): where the band holds any mass, one more pass takes them (kd_tvd).
        const double band = t[10] * (simd::kTvdBand + std::fabs(dl));
        const bool unsure = std::fabs(dl) > 0.5 * simd::kTvdBand || band > 1e-7 * loss;
        const bool exact = unsure || loss < kCancel * (qpos / t[1] + Pp / t[0]);
        double dg = dl;  // the gradient's delta
        if (exact) {
          // |q - p| per token with the exact r, and each token's side of r = 0 by it. Unlike
          // the Bregman sums, tvd moves at first order with r (d tvd / d r = (P+ - Q-) / 2,
          // ~1/2 for a peaked row, whose tvd can be ~1e-8): so delta is measured first,
          // precisely, and the row summed with it.
          for (size_t c = 0; c < chunks; ++c) k.kd_tvd(precise(chunk(c, K + dl)), s);
          dg = delta();
          std::fill(s, s + 6, 0.0);
        }
        if (exact || (g && t[10] > 0)) {
          for (size_t c = 0; c < chunks; ++c) k.kd_tvd(chunk(c, K + dg), s);
          loss = 0.5 * s[2] / s[1];
          qpos = s[3];
          qneg = s[4];
          q0 = s[5];
        }
        if (g) {
          const double qt = qpos + qneg + q0;
          const float cpos = float((qneg + 0.5 * q0) / qt), cneg = float(-(qpos + 0.5 * q0) / qt);
          const float czero = float(0.5 * (qneg - qpos) / qt);
          for (size_t c = 0; c < chunks; ++c)
            k.kd_grad_tvd(chunk(c, K + dg), cpos, cneg, czero, float(gscale / qt), g + c * kChunk);
        }
      }
      break;
    }
    case Divergence::JSD: {
      // The gradient's row constant C = KL(q || m) = sum q h, h = log(q/m), is summed as
      // h(r) - h(r0) relative to r0 = r at the student's argmax, without cancellation.
      const size_t xq = size_t(Q.find_argmax());
      const double r0 = ((double(zs[xq]) - ms) - (double(zt[xq]) - mt)) * inv_t + K;
      const simd::JsdRef hr = jsd_ref(r0, beta);
      for (size_t c = 0; c < chunks; ++c) k.kd_jsd(first(c, K), *jsd, g ? &hr : nullptr, s);
      loss = bregman(delta(), beta * (1 - beta));  // r = r~ here: off by delta
      if (g) {
        const double lb = std::log(beta), l1b = std::log1p(-beta);
        const double C = -log_add_exp(l1b, lb - (r0 + delta())) + s[4] / s[1];
        // h(r*) = C: the gradient q (h - C) is then q (h(r) - h(r*)), again relative.
        const double t = std::max(std::exp(-C) - (1 - beta), 1e-300);
        const simd::JsdRef star = jsd_ref(lb - std::log(t), beta);
        for (size_t c = 0; c < chunks; ++c)
          k.kd_grad_jsd(chunk(c, K + delta()), star, float((1 - beta) * gscale / s[1]), g + c * kChunk);
      }
      break;
    }
  }
  return loss;
}

}  // namespace

double kd_loss(const KdArgs& a, float* per_row, float* grad) {
  if (a.vocab < 1 || a.vocab > size_t(INT32_MAX))
    throw Error(Code::Value, "vocab: expected an integer in [1, 2147483647], received " + std::to_string(a.vocab));
  if (!std::isfinite(a.temperature) || !(a.temperature > 0))
    throw Error(Code::Value, "temperature: expected a finite number > 0, received " + js_number(a.temperature));
  if (a.divergence == Divergence::JSD && !(a.beta > 0 && a.beta < 1))
    throw Error(Code::Value, "beta: expected a number in (0, 1), received " + js_number(a.beta));
  if (use_cuda(a.device, 2 * a.rows * a.vocab * sizeof(float))) return cuda::kd_loss(a, per_row, grad);
  size_t included = 0;
  for (size_t r = 0; r < a.rows; ++r) included += a.mask == nullptr || a.mask[r] != 0;
  const double t2 = a.scale_t2 ? a.temperature * a.temperature : 1.0;
  const double gscale = included ? t2 / (a.temperature * double(included)) : 0.0;
  std::vector<double> losses(a.rows, 0.0);
  // The JSD table for this beta (256 evaluations of G in double), kept per thread for the
  // next call.
  thread_local double table_beta = -1;
  thread_local simd::JsdTable table;
  if (a.divergence == Divergence::JSD && a.beta != table_beta) {
    table = jsd_table(a.beta);
    table_beta = a.beta;
  }
  const simd::JsdTable* jsd = &table;  // this thread's: the workers' thread_locals are others
  // Tasks are runs of consecutive rows, so that each row can prefetch the next one its
  // thread will do; several runs per thread keep the load balanced. Rows are
  // independent: the results do not depend on the grouping.
  const size_t runs = std::min(a.rows, size_t(ThreadPool::global().threads()) * 4);
  ThreadPool::global().parallel_for(runs, [&](size_t run) {
    const size_t begin = a.rows * run / runs, end = a.rows * (run + 1) / runs;
    for (size_t r = begin; r < end; ++r) {
      float* g = grad ? grad + r * a.vocab : nullptr;
      if (a.mask != nullptr && a.mask[r] == 0) {
        if (g) std::memset(g, 0, a.vocab * sizeof(float));
        continue;
      }
      size_t next = r + 1;
      while (next < end && a.mask != nullptr && a.mask[next] == 0) ++next;
      losses[r] = kd_row(a, r, next < end ? next : a.rows, gscale, g, jsd) * t2;
    }
  });
  double total = 0;
  for (size_t r = 0; r < a.rows; ++r) {
    per_row[r] = float(losses[r]);
    total += losses[r];
  }
  return included ? total / double(included) : 0.0;
}

void acceptance_rate(const float* target, const float* draft, size_t rows, size_t vocab, ParamsView tp,
                     ParamsView dp, float* out, Device device) {
  if (vocab < 1 || vocab > size_t(INT32_MAX))
    throw Error(Code::Value, "vocab: expected an integer in [1, 2147483647], received " + std::to_string(vocab));
  validate_params(tp, rows, "target");
  validate_params(dp, rows, "draft");
  if (use_cuda(device, 2 * rows * vocab * sizeof(float)))
    return cuda::acceptance_rate(target, draft, rows, vocab, tp, dp, out);
  ThreadPool::global().parallel_for(rows, [&](size_t r) {
    Workspace& ws = workspace();
    const float* zt = target + r * vocab;
    const float* zd = draft + r * vocab;
    Distribution P, Q;
    int64_t bad = build_distribution(zt, vocab, tp[r], ws.row(0, vocab), true, P);
    if (bad >= 0) throw_nonfinite("targetLogits", r, vocab, size_t(bad), zt[bad]);
    bad = build_distribution(zd, vocab, dp[r], ws.row(1, vocab), true, Q);
    if (bad >= 0) throw_nonfinite("draftLogits", r, vocab, size_t(bad), zd[bad]);
    out[r] = float(std::min(1.0, std::max(0.0, overlap(P, Q))));
  });
}

}  // namespace specula
