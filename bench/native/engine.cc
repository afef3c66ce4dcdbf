// Engine benchmark without Node: bench/engine.js's table from the native Engine, for
// machines that have a compiler but no Node (the device hosts). A ~100M-parameter target
// (the llama-100m preset) and a ~5M draft (llama-5m), random weights written here, f32
// then bf16 (--dtype picks one). For gamma in {2, 4, 8} and T in {0, 1}, each prompt alone
// (B = 1), the same prompts, seeds and token budget: the target's autoregressive tokens/s
// (gamma 0, the same code path), speculative tokens/s, the measured speedup next to
// Leviathan's prediction from the measured alpha and c, and the loop's own overhead (wall
// time outside the forwards and kernels). Then batch throughput for B in {1, 4, 16}.
// The statistics are pooled exactly as the TypeScript decoder pools them
// (src/engine/decoder.ts: alpha = accepted / tested, c = draft step / verification step,
// tau = emitted / target calls). Without N-API and detokenization the overhead here is
// the engine loop's alone. Prompts are the bytes of bench/engine.js's prompts; no EOS.
//   bench_engine [--dtype f32,bf16] [--threads N] [--tokens N] [--quick]
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "amx.h"
#include "bench_util.h"
#include "engine.h"
#include "random_model.h"
#include "simd.h"
#include "thread_pool.h"

using specula::simd::WType;

namespace {

const char* const kPrompts[] = {"The history of the city", "Once upon a time, in a land", "def fibonacci(n):",
                                "Question: what is 12 * 7?"};

std::vector<int32_t> prompt_tokens(size_t i) {
  std::vector<int32_t> t;
  for (const char* p = kPrompts[i % 4]; *p != 0; ++p) t.push_back(int32_t(static_cast<unsigned char>(*p)));
  return t;
}

// Leviathan et al.: expected tokens per target call and the predicted speedup.
double tau_model(double a, size_t g) { return a >= 1 ? double(g + 1) : (1 - std::pow(a, double(g + 1))) / (1 - a); }
double predicted(double a, size_t g, double c) { return tau_model(a, g) / (double(g) * c + 1); }

struct Pooled {
  double tokens = 0, ms = 0, accepted = 0, tested = 0, emitted = 0, draft_ms = 0, draft_calls = 0, target_ms = 0,
         target_calls = 0, inside_ms = 0;
  double tps() const { return tokens / (ms / 1e3); }
  double alpha() const { return tested > 0 ? accepted / tested : 0; }
  double target_step() const { return target_ms / target_calls; }
  double draft_step() const { return draft_calls > 0 ? draft_ms / draft_calls : 0; }
  double c() const { return draft_calls > 0 ? draft_step() / target_step() : 0; }
  double tau() const { return emitted / target_calls; }
  double overhead() const { return (ms - inside_ms) / ms; }
};

// Runs the sequences (one batch) to max_new tokens; adds to `pool` (per sequence, as the
// decoder does: a step's times are the batch's).
void run_batch(specula::Engine& eng, size_t B, size_t first_prompt, uint64_t seed0, size_t gamma, double T,
               size_t max_new, Pooled& pool) {
  specula::SequenceOptions o;
  o.target.temperature = o.draft.temperature = T;
  o.gamma = gamma;
  o.max_new_tokens = max_new;
  std::vector<size_t> slots;
  const auto t0 = bench::Clock::now();
  for (size_t b = 0; b < B; ++b) {
    const auto p = prompt_tokens(first_prompt + b);
    o.seed = seed0 + b;
    slots.push_back(eng.add(p.data(), p.size(), o));
  }
  while (eng.step() > 0) {
    const auto& t = eng.times();
    pool.inside_ms += t.prefill + t.draft + t.target + t.sampling;
    for (size_t s : slots) {
      if (!eng.stepped(s)) continue;
      const auto& r = eng.record(s);
      pool.target_calls += 1;
      pool.target_ms += t.target;
      if (r.drafted > 0) {
        pool.draft_calls += r.drafted;
        pool.draft_ms += t.draft_calls > 0 ? t.draft * r.drafted / t.draft_calls : 0;
      }
      pool.accepted += r.accepted;
      pool.emitted += r.accepted + 1;
      pool.tested += double(r.expected.size());
    }
  }
  pool.ms += bench::seconds_since(t0) * 1e3;
  for (size_t s : slots) {
    pool.tokens += double(eng.tokens(s).size() - eng.prompt_length(s));
    eng.remove(s);
  }
}

std::string fmt(double v, int d) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", d, v);
  return b;
}

void print_table(const std::vector<std::string>& h, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    w[i] = h[i].size();
    for (const auto& r : rows) w[i] = std::max(w[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string s = "|";
    for (size_t i = 0; i < r.size(); ++i) s += " " + std::string(w[i] - r[i].size(), ' ') + r[i] + " |";
    std::printf("%s\n", s.c_str());
  };
  line(h);
  std::string sep = "|";
  for (size_t x : w) sep += std::string(x + 1, '-') + ":|";
  std::printf("%s\n", sep.c_str());
  for (const auto& r : rows) line(r);
}

void bench_dtype(WType wt, const char* name, size_t tokens, size_t prompts) {
  bench::TempFile tf, df;
  const std::string base = "/tmp/specula-bench-engine-" + std::to_string(::getpid());
  tf.path = base + "-target.bin";
  df.path = base + "-draft.bin";
  const auto tc = bench::llama_100m(), dc = bench::llama_5m();
  const auto tspecs = bench::write_model(tc, wt, tf.path, 1);
  const auto dspecs = bench::write_model(dc, wt, df.path, 2);
  auto target = std::make_shared<const specula::Model>(tc, std::vector<std::string>{tf.path}, tspecs);
  auto draft = std::make_shared<const specula::Model>(dc, std::vector<std::string>{df.path}, dspecs);
  specula::Engine eng(target, draft, 16, 1024);
  const std::string amx =
      wt == WType::BF16 && specula::amx::enabled() ? ", AMX (" + std::to_string(specula::amx::pieces()) + " pieces)" : "";
  std::printf("\n== native engine benchmark: target llama-100m, draft llama-5m (%s, random weights), %zu threads, "
              "%s kernels%s, prefetch %s, %zu new tokens per sequence\n",
              name, size_t(specula::ThreadPool::global().threads()), specula::simd::kernels().name, amx.c_str(),
              specula::simd::prefetch_name(specula::simd::matmul_prefetch()), tokens);

  auto run = [&](size_t gamma, double T) {
    Pooled p;
    for (size_t i = 0; i < prompts; ++i) run_batch(eng, 1, i, 1000 + i, gamma, T, tokens, p);
    return p;
  };
  run(0, 1);  // warm-up: page in the weights
  std::vector<std::vector<std::string>> rows;
  for (double T : {0.0, 1.0}) {
    const Pooled ar = run(0, T);
    rows.push_back({fmt(T, 0), "0 (AR)", fmt(ar.tps(), 1), fmt(ar.tps(), 1), "1.00", "-", "-", "-", "-", "-", "-",
                    fmt(ar.target_step(), 2) + " ms", "-", fmt(100 * ar.overhead(), 1)});
    for (size_t g : {2, 4, 8}) {
      const Pooled s = run(g, T);
      const double speedup = s.tps() / ar.tps(), pred = predicted(s.alpha(), g, s.c());
      const double with_verify =
          tau_model(s.alpha(), g) / (double(g) * s.draft_step() / ar.target_step() + s.target_step() / ar.target_step());
      rows.push_back({fmt(T, 0), std::to_string(g), fmt(ar.tps(), 1), fmt(s.tps(), 1), fmt(speedup, 2), fmt(pred, 2),
                      fmt(speedup / pred, 2), fmt(with_verify, 2), fmt(speedup / with_verify, 2), fmt(s.alpha(), 3),
                      fmt(s.c(), 3), fmt(s.target_step() / ar.target_step(), 2), fmt(s.tau(), 2),
                      fmt(100 * s.overhead(), 1)});
    }
  }
  std::printf("\nSingle sequence (B = 1), speedup = speculative tok/s / autoregressive tok/s, same prompts and seeds:\n");
  print_table({"T", "gamma", "AR tok/s", "spec tok/s", "speedup", "predicted", "meas/pred", "pred. w/ verify cost",
               "meas/pred2", "alpha", "c", "verify/AR step", "tau", "overhead %"},
              rows);
  std::vector<std::vector<std::string>> brows;
  for (size_t B : {1, 4, 16}) {
    Pooled ar, sp;
    run_batch(eng, B, 0, 500, 0, 1.0, tokens, ar);
    run_batch(eng, B, 0, 500, 4, 1.0, tokens, sp);
    brows.push_back({std::to_string(B), fmt(ar.tps(), 1), fmt(sp.tps(), 1), fmt(sp.tps() / ar.tps(), 2)});
  }
  std::printf("\nBatch throughput (tokens/s over all sequences, T 1):\n");
  print_table({"B", "AR tok/s", "spec (gamma 4) tok/s", "ratio"}, brows);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dtypes = "f32,bf16";
  int threads = 2, tokens = 0;  // tokens 0: 96, or 32 with --quick
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dtype" && i + 1 < argc) dtypes = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--tokens" && i + 1 < argc) tokens = std::atoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: bench_engine [--dtype f32,bf16] [--threads N] [--tokens N] [--quick]\n");
      return 2;
    }
  }
  if (threads < 1 || threads > 1024 || tokens < 0 || tokens > 1000) {
    std::fprintf(stderr, "--threads: expected 1..1024, --tokens: expected 1..1000 (prompt + tokens fit the context of 1024)\n");
    return 2;
  }
  if (tokens == 0) tokens = quick ? 32 : 96;
  const size_t ntok = size_t(tokens);
  specula::ThreadPool::global().set_threads(threads);
  std::stringstream ss(dtypes);
  std::string d;
  std::vector<std::string> list;
  while (std::getline(ss, d, ',')) {
    if (d != "f32" && d != "bf16" && d != "f16") {
      std::fprintf(stderr, "--dtype: expected f32, f16 or bf16 (comma-separated), got \"%s\"\n", d.c_str());
      return 2;
    }
    list.push_back(d);
  }
  for (const auto& x : list)
    bench_dtype(x == "bf16" ? WType::BF16 : x == "f16" ? WType::F16 : WType::F32, x.c_str(), ntok, quick ? 2 : 4);
  std::printf("\nalpha: realized per-token acceptance; c: draft forward time / target (verification) forward time;\n"
              "predicted: (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1)); pred. w/ verify cost: the same tau over\n"
              "(gamma draft step + verify step) in AR steps; overhead: wall time outside forwards and kernels.\n");
  return 0;
}
