#include "sampling.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backend.h"
#include "distribution.h"
#include "error.h"
#include "philox.h"
#include "simd.h"
#include "thread_pool.h"

namespace specula {
namespace {

constexpr double kResidualFloor = 1e-12;

void check_vocab(size_t vocab) {
  if (vocab < 1 || vocab > size_t(std::numeric_limits<int32_t>::max()))
    throw Error(Code::Value, "vocab: expected an integer in [1, 2147483647], received " +
                                 std::to_string(vocab));
}

[[noreturn]] void throw_nonfinite(const char* name, const std::string& where, size_t flat,
                                  float value) {
  throw Error(Code::Value, std::string(name) + "[" + std::to_string(flat) + "] (" + where +
                               "): expected a finite logit, received " + js_number(value));
}

}  // namespace

void sample(const SampleArgs& a, int32_t* out) {
  check_vocab(a.vocab);
  validate_params(a.params, a.rows, "params");
  if (use_cuda(a.device, a.rows * a.vocab * sizeof(float))) return cuda::sample(a, out);
  ThreadPool::global().parallel_for(a.rows, [&](size_t r) {
    Workspace& ws = workspace();
    const float* z = a.logits + r * a.vocab;
    Distribution d;
    const int64_t bad = build_distribution(z, a.vocab, a.params[r], ws.row(0, a.vocab), false, d);
    if (bad >= 0)
      throw_nonfinite("logits", "row " + std::to_string(r) + ", token " + std::to_string(bad),
                      r * a.vocab + size_t(bad), z[bad]);
    const uint64_t pos = a.offsets ? a.offsets[r] : 0;
    out[r] = sample_distribution(d, rng::uniform(a.seeds[r], pos, 0, rng::kSample));
  });
}

void probabilities(const float* logits, size_t rows, size_t vocab, ParamsView params, float* out, Device device) {
  check_vocab(vocab);
  validate_params(params, rows, "params");
  if (use_cuda(device, rows * vocab * sizeof(float))) return cuda::probabilities(logits, rows, vocab, params, out);
  ThreadPool::global().parallel_for(rows, [&](size_t r) {
    const float* z = logits + r * vocab;
    float* p = out + r * vocab;
    Distribution d;
    const int64_t bad = build_distribution(z, vocab, params[r], p, true, d);
    if (bad >= 0)
      throw_nonfinite("logits", "row " + std::to_string(r) + ", token " + std::to_string(bad),
                      r * vocab + size_t(bad), z[bad]);
    const simd::Kernels& k = simd::kernels();
    for (size_t c = 0; c < d.scale.size(); ++c) {
      const size_t off = c * kChunk, len = std::min(kChunk, vocab - off);
      k.scale(p + off, len, float(d.scale[c] / d.total));
    }
  });
}

void verify(const VerifyArgs& a, const VerifyOut& o) {
  const size_t B = a.batch, G = a.gamma, V = a.vocab;
  check_vocab(V);
  validate_params(a.target, B, "target");
  validate_params(a.draft, B, "draft");
  std::vector<int32_t> lengths(B, int32_t(G));
  for (size_t b = 0; b < B; ++b) {
    if (a.draft_lengths) {
      const int32_t L = a.draft_lengths[b];
      if (L < 0 || size_t(L) > G)
        throw Error(Code::Value, "draftLengths[" + std::to_string(b) + "]: expected an integer in [0, gamma = " +
                                     std::to_string(G) + "], received " + std::to_string(L));
      lengths[b] = L;
    }
    for (int32_t i = 0; i < lengths[b]; ++i) {
      const int32_t x = a.draft_tokens[b * G + i];
      if (x < 0 || size_t(x) >= V)
        throw Error(Code::Value, "draftTokens[" + std::to_string(b * G + i) + "] (batch " + std::to_string(b) +
                                     ", position " + std::to_string(i) + "): expected a token id in [0, vocab = " +
                                     std::to_string(V) + "), received " + std::to_string(x));
    }
  }

  if (use_cuda(a.device, (2 * G + 1) * B * V * sizeof(float))) return cuda::verify(a, o);

  // One task per (row, position): positions 0..L-1 verify a drafted token against its
  // draft row; each decides its own acceptance and, if it rejects, samples its residual
  // token while both rows are still in cache. Then one task per row for the bonus
  // position L, scheduled last: a row with a known rejection needs no bonus token, so
  // that task only checks the logits (results never depend on this timing).
  struct Task {
    uint32_t b, i;
  };
  std::vector<Task> tasks;
  tasks.reserve(B * (G + 1));
  for (size_t b = 0; b < B; ++b)
    for (int32_t i = 0; i < lengths[b]; ++i) tasks.push_back(Task{uint32_t(b), uint32_t(i)});
  for (size_t b = 0; b < B; ++b) tasks.push_back(Task{uint32_t(b), uint32_t(lengths[b])});
  std::vector<uint8_t> accept(B * (G + 1), 0);
  std::vector<int32_t> candidate(B * (G + 1), -1);
  std::unique_ptr<std::atomic<bool>[]> rejected(new std::atomic<bool>[B]);
  for (size_t b = 0; b < B; ++b) rejected[b].store(false, std::memory_order_relaxed);

  ThreadPool::global().parallel_for(tasks.size(), [&](size_t t) {
    const size_t b = tasks[t].b, i = tasks[t].i, L = size_t(lengths[b]);
    const uint64_t pos = (a.offsets ? a.offsets[b] : 0) + i;
    const uint64_t seed = a.seeds[b];
    Workspace& ws = workspace();
    auto where = [&](size_t token) {
      return "batch " + std::to_string(b) + ", position " + std::to_string(i) + ", token " + std::to_string(token);
    };
    const float* zt = a.target_logits + (b * (G + 1) + i) * V;
    Distribution p;
    const double u_emit = rng::uniform(seed, pos, 0, rng::kEmit);
    if (i == L) {
      if (rejected[b].load(std::memory_order_relaxed)) {
        const int64_t bad = first_nonfinite(zt, V);
        if (bad >= 0) throw_nonfinite("targetLogits", where(size_t(bad)), (b * (G + 1) + i) * V + size_t(bad), zt[bad]);
        return;
      }
      const int64_t bad = build_distribution(zt, V, a.target[b], ws.row(0, V), false, p);
      if (bad >= 0) throw_nonfinite("targetLogits", where(size_t(bad)), (b * (G + 1) + i) * V + size_t(bad), zt[bad]);
      candidate[b * (G + 1) + i] = sample_distribution(p, u_emit);
      return;
    }
    const float* zd = a.draft_logits + (b * G + i) * V;
    Distribution q;
    int64_t bad = build_distribution(zt, V, a.target[b], ws.row(0, V), true, p);
    if (bad >= 0) throw_nonfinite("targetLogits", where(size_t(bad)), (b * (G + 1) + i) * V + size_t(bad), zt[bad]);
    bad = build_distribution(zd, V, a.draft[b], ws.row(1, V), true, q);
    if (bad >= 0) throw_nonfinite("draftLogits", where(size_t(bad)), (b * G + i) * V + size_t(bad), zd[bad]);

    const size_t x = size_t(a.draft_tokens[b * G + i]);
    const double px = p.prob(x), qx = q.prob(x);
    const double ratio = qx > 0 ? std::min(1.0, px / qx) : (px > 0 ? 1.0 : 0.0);
    o.accept_prob[b * G + i] = float(ratio);
    o.expected[b * G + i] = float(std::min(1.0, std::max(0.0, overlap(p, q))));
    const bool ok = rng::uniform(seed, pos, 0, rng::kAccept) < ratio;
    accept[b * (G + 1) + i] = ok;
    if (!ok) {
      rejected[b].store(true, std::memory_order_relaxed);
      const double resid_total = residual_sums(p, q, ws.resid_csum);
      candidate[b * (G + 1) + i] = resid_total > kResidualFloor
                                       ? sample_residual(p, q, ws.resid_csum, resid_total, u_emit)
                                       : sample_distribution(p, u_emit);
    }
  });

  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t b = 0; b < B; ++b) {
    const size_t L = size_t(lengths[b]);
    size_t n = 0;
    while (n < L && accept[b * (G + 1) + n]) ++n;
    int32_t* tok = o.tokens + b * (G + 1);
    for (size_t i = 0; i < n; ++i) tok[i] = a.draft_tokens[b * G + i];
    tok[n] = candidate[b * (G + 1) + n];
    for (size_t i = n + 1; i <= G; ++i) tok[i] = -1;
    o.accepted[b] = int32_t(n);
    o.emitted[b] = int32_t(n + 1);
    for (size_t i = L; i < G; ++i) o.accept_prob[b * G + i] = o.expected[b * G + i] = nan;
  }
}

double read_pass(const float* const* arrays, const size_t* lengths, size_t count) {
  // Slices of 1 MiB, handed out in order, like the kernels' row tasks.
  constexpr size_t kSlice = size_t(1) << 18;
  struct Slice {
    const float* p;
    size_t n;
  };
  std::vector<Slice> slices;
  for (size_t i = 0; i < count; ++i)
    for (size_t off = 0; off < lengths[i]; off += kSlice)
      slices.push_back(Slice{arrays[i] + off, std::min(kSlice, lengths[i] - off)});
  std::vector<double> sums(slices.size());
  const simd::Kernels& k = simd::kernels();
  ThreadPool::global().parallel_for(slices.size(), [&](size_t s) { sums[s] = k.read(slices[s].p, slices[s].n); });
  double total = 0;
  for (double s : sums) total += s;
  return total;
}

}  // namespace specula
