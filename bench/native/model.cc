// Model-runtime microbenchmark (no Node): a random ~100M-parameter Llama written to a
// temporary file, then decode (1 x 1 token at context 512), verification (8 x 5 tokens),
// and prefill (1 x 512) against ceilings measured in the same run: read bandwidth over a
// buffer the size of the weights, and an FMA-peak loop. --ladder times instead the
// engine's verification shape 1 x n, n = 1..12, against decoding (n = 1); --context N
// (up to 1008) sets the context of all of them. --prefetch-ab runs the ladder under both
// prefetch policies of the matrix kernels (simd.h, matmul_prefetch: l1, l2), alternating
// round by round, and prints each n's median under both and their ratio. --hidden,
// --intermediate and --layers change the shape (heads of 64, a key head per 4 queries):
// --hidden 2048 --intermediate 8192 --layers 4 has a 1B model's matrices, whose rows
// are 8 KiB apart (simd.h, packs_x).
//   bench_model [--dtype f32|bf16|f16] [--threads N] [--quick] [--ladder] [--prefetch-ab] [--context N]
//               [--hidden N] [--intermediate N] [--layers N]
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "amx.h"
#include "bench_util.h"
#include "random_model.h"
#include "model.h"
#include "sampling.h"
#include "simd.h"
#include "thread_pool.h"

using specula::simd::WType;

using bench::TempFile;
using bench::write_model;

int main(int argc, char** argv) {
  std::string dtype = "f32";
  int threads = 2;
  bool quick = false, prefill_only = false, verify_only = false, decode_only = false, verify1_only = false;  // --*-only: for profilers
  bool ladder = false;  // --ladder: 1 x n passes for n = 1..12 against decoding, interleaved
  bool prefetch_ab = false;  // --prefetch-ab: the ladder under both prefetch policies, alternating
  size_t ctx = 512;
  size_t hidden = 0, intermediate = 0, layers = 0;  // 0: llama-100m's
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dtype" && i + 1 < argc) dtype = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else if (a == "--prefill-only") prefill_only = true;
    else if (a == "--verify-only") verify_only = true;
    else if (a == "--decode-only") decode_only = true;
    else if (a == "--verify1-only") verify1_only = true;
    else if (a == "--ladder") ladder = true;
    else if (a == "--prefetch-ab") ladder = prefetch_ab = true;
    else if (a == "--hidden" && i + 1 < argc) hidden = size_t(std::max(0, std::atoi(argv[++i])));
    else if (a == "--intermediate" && i + 1 < argc) intermediate = size_t(std::max(0, std::atoi(argv[++i])));
    else if (a == "--layers" && i + 1 < argc) layers = size_t(std::max(0, std::atoi(argv[++i])));
    else if (a == "--context" && i + 1 < argc) ctx = size_t(std::min(1008, std::max(1, std::atoi(argv[++i]))));
  }
  if (hidden % 64 != 0 || (hidden > 0 && hidden < 256)) {
    std::fprintf(stderr, "--hidden: expected a multiple of 64, at least 256; got %zu\n", hidden);
    return 2;
  }
  const WType wt = dtype == "bf16" ? WType::BF16 : dtype == "f16" ? WType::F16 : WType::F32;
  specula::ThreadPool::global().set_threads(threads);
  specula::ModelConfig c = bench::llama_100m();
  if (hidden > 0) {  // --hidden: another width (heads of 64, 4 query heads per key head)
    c.hidden = hidden;
    c.heads = hidden / 64;
    c.kv_heads = c.heads / 4;
  }
  if (intermediate > 0) c.intermediate = intermediate;
  if (layers > 0) c.layers = layers;
  TempFile tmp;
  tmp.path = "/tmp/specula-bench-model-" + std::to_string(::getpid()) + ".bin";
  const auto specs = write_model(c, wt, tmp.path);
  auto model = std::make_shared<const specula::Model>(c, std::vector<std::string>{tmp.path}, specs);
  const double wbytes = double(model->weight_bytes_per_token());
  const std::string amx = specula::amx::enabled() && wt == WType::BF16
                              ? " (AMX, " + std::to_string(specula::amx::pieces()) + " pieces)"
                              : "";
  const std::string shape = hidden + intermediate + layers == 0
                                ? "llama-100m"
                                : "llama (hidden " + std::to_string(c.hidden) + ", intermediate " +
                                      std::to_string(c.intermediate) + ", " + std::to_string(c.layers) + " layers)";
  std::printf("model: %s %s, %.1f M parameters, %.0f MB weights per token, %s%s, prefetch %s, %d threads\n",
              shape.c_str(), dtype.c_str(), wbytes / (wt == WType::F32 ? 4 : 2) / 1e6, wbytes / 1e6, specula::simd::kernels().name,
              amx.c_str(), specula::simd::prefetch_name(specula::simd::matmul_prefetch()), threads);

  // Ceilings.
  std::vector<float> big(size_t(wbytes / 4) + (1 << 20));
  bench::fill_normal(big.data(), big.size(), 1, 7);
  const float* arrays[1] = {big.data()};
  const size_t lens[1] = {big.size()};
  std::vector<double> bw;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = bench::Clock::now();
    specula::read_pass(arrays, lens, 1);
    bw.push_back(double(big.size()) * 4 / bench::seconds_since(t0));
  }
  std::sort(bw.begin(), bw.end());
  const double read_bw = bw.back();
  big.clear();
  big.shrink_to_fit();
  double peak = 0;
  for (int r = 0; r < 5; ++r) {
    std::vector<double> flops(threads), sink(threads);
    const auto t0 = bench::Clock::now();
    specula::ThreadPool::global().parallel_for(threads, [&](size_t i) {
      flops[i] = specula::simd::kernels().fma_peak(20000000, &sink[i]);
    });
    const double s = bench::seconds_since(t0);
    double f = 0;
    for (double v : flops) f += v;
    peak = std::max(peak, f / s);
  }
  std::printf("ceilings: read %.1f GB/s, FMA peak %.0f GFLOP/s\n", read_bw / 1e9, peak / 1e9);

  const size_t V = c.vocab;
  std::vector<int32_t> prompt(ctx);
  for (size_t i = 0; i < ctx; ++i) prompt[i] = int32_t((i * 7919 + 13) % V);
  std::vector<float> logits(40 * V);

  // Prefill 1 x 512 (last logits).
  double prefill_s = 1e9;
  {
    specula::KvCache cache(model, 1, ctx + 16);
    for (int r = 0; r < (quick || decode_only || verify1_only || ladder ? 1 : prefill_only ? 10 : 3); ++r) {
      cache.reset();
      specula::ForwardItem it{0, prompt.data(), ctx, 1};
      const auto t0 = bench::Clock::now();
      cache.forward(&it, 1, logits.data());
      prefill_s = std::min(prefill_s, bench::seconds_since(t0));
    }
  }
  // Matmul flops plus attention (q k and p v over the causal triangle).
  const double mm_flops = 2.0 * (wbytes / (wt == WType::F32 ? 4 : 2));
  const double attn_flops = 4.0 * c.layers * c.heads * c.head_dim * (double(ctx) * (ctx + 1) / 2);
  const double prefill_flops = mm_flops * ctx - 2.0 * c.vocab * c.hidden * (ctx - 1) + attn_flops;

  if (prefill_only) {
    std::printf("prefill  %8.1f ms (1 x %zu)  %6.1f GFLOP/s  %.2f of FMA peak\n", prefill_s * 1e3, ctx,
                prefill_flops / prefill_s / 1e9, prefill_flops / prefill_s / peak);
    return 0;
  }
  // Decode at context 512: one token, then roll back.
  specula::KvCache cache(model, 8, ctx + 16);
  for (size_t s = 0; s < (decode_only ? 1 : 8); ++s) {
    specula::ForwardItem it{s, prompt.data(), ctx, 0};
    cache.forward(&it, 1, logits.data());
  }
  if (ladder) {
    // The engine's verification shape, 1 x n (all logits), at this context, against a
    // decode step (n = 1), in interleaved rounds so that the machine's drift hits all alike.
    // With --prefetch-ab, policy 0 is l1 and 1 is l2, alternating round by round.
    using specula::simd::PrefetchLevel;
    constexpr size_t kMax = 12;
    const PrefetchLevel saved = specula::simd::matmul_prefetch();
    const PrefetchLevel policies[2] = {PrefetchLevel::L1, PrefetchLevel::L2};
    const int np = prefetch_ab ? 2 : 1;
    std::vector<double> t[2][kMax + 1];
    std::vector<int32_t> toks(kMax);
    for (size_t i = 0; i < kMax; ++i) toks[i] = int32_t((i * 104729) % V);
    for (int r = 0; r < (quick ? 5 : prefetch_ab ? 15 : 25); ++r) {
      for (int p = 0; p < np; ++p) {
        specula::simd::set_matmul_prefetch(prefetch_ab ? policies[p] : saved);
        for (size_t n = 1; n <= kMax; ++n) {
          specula::ForwardItem it{0, toks.data(), n, n};
          const auto t0 = bench::Clock::now();
          cache.forward(&it, 1, logits.data());
          t[p][n].push_back(bench::seconds_since(t0));
          cache.truncate(0, ctx);
        }
      }
    }
    if (prefetch_ab) {
      std::printf("ladder at context %zu under both prefetch policies (alternating rounds): 1 x n tokens, median ms "
                  "(x that policy's decode)\n", ctx);
      std::printf("  n     l1 ms          l2 ms          l2 / l1\n");
      for (size_t n = 1; n <= kMax; ++n) {
        const double a = bench::median(t[0][n]), b = bench::median(t[1][n]);
        std::printf("  %2zu  %6.2f (%.2f)  %6.2f (%.2f)  %.2f\n", n, a * 1e3, a / bench::median(t[0][1]), b * 1e3,
                    b / bench::median(t[1][1]), b / a);
      }
      specula::simd::set_matmul_prefetch(saved);
      return 0;
    }
    const double d = bench::median(t[0][1]);
    std::printf("ladder at context %zu: 1 x n tokens, median ms (x decode)\n", ctx);
    for (size_t n = 1; n <= kMax; ++n)
      std::printf("  n = %2zu  %6.2f ms  %.2f\n", n, bench::median(t[0][n]) * 1e3, bench::median(t[0][n]) / d);
    return 0;
  }
  std::vector<double> dec;
  const int steps = verify_only || verify1_only ? 1 : decode_only ? 300 : quick ? 10 : 40;
  for (int r = 0; r < steps; ++r) {
    const int32_t tok = int32_t(r * 31 % V);
    specula::ForwardItem it{0, &tok, 1, 1};
    const auto t0 = bench::Clock::now();
    cache.forward(&it, 1, logits.data());
    dec.push_back(bench::seconds_since(t0));
    cache.truncate(0, ctx);
  }
  const double decode_s = bench::median(dec);
  if (decode_only) {
    std::printf("decode   %8.2f ms/token  bandwidth bound %.2f ms: %.2f of it\n", decode_s * 1e3,
                wbytes / read_bw * 1e3, wbytes / read_bw / decode_s);
    return 0;
  }
  // Verification: 8 sequences x 5 tokens, all logits.
  std::vector<double> ver;
  std::vector<int32_t> vt(40);
  for (size_t i = 0; i < 40; ++i) vt[i] = int32_t((i * 104729) % V);
  for (int r = 0; r < (quick || verify1_only ? 1 : verify_only ? 100 : 15); ++r) {
    specula::ForwardItem items[8];
    for (size_t s = 0; s < 8; ++s) items[s] = {s, vt.data() + 5 * s, 5, 5};
    const auto t0 = bench::Clock::now();
    cache.forward(items, 8, logits.data());
    ver.push_back(bench::seconds_since(t0));
    for (size_t s = 0; s < 8; ++s) cache.truncate(s, ctx);
  }
  const double verify_s = bench::median(ver);
  // One sequence's verification pass in the engine: 1 x (gamma + 1) tokens, gamma 2, 4, 8.
  const size_t one_n[3] = {3, 5, 9};
  double one_s[3];
  for (int g = 0; g < 3; ++g) {
    std::vector<double> t1;
    for (int r = 0; r < (quick ? 5 : verify_only ? 1 : verify1_only ? (g == 1 ? 300 : 1) : 15); ++r) {
      specula::ForwardItem it{0, vt.data(), one_n[g], one_n[g]};
      const auto t0 = bench::Clock::now();
      cache.forward(&it, 1, logits.data());
      t1.push_back(bench::seconds_since(t0));
      cache.truncate(0, ctx);
    }
    one_s[g] = bench::median(t1);
  }
  const double bound_s = wbytes / read_bw;
  std::printf("decode   %8.2f ms/token  %7.1f tokens/s  bandwidth bound %.2f ms: %.2f of it\n", decode_s * 1e3,
              1 / decode_s, bound_s * 1e3, bound_s / decode_s);
  std::printf("verify   %8.2f ms (8 x 5 tokens)  %.2f x decode\n", verify_s * 1e3, verify_s / decode_s);
  std::printf("verify1  1 x 3 / 5 / 9 tokens: %.2f / %.2f / %.2f ms = %.2f / %.2f / %.2f x decode\n", one_s[0] * 1e3,
              one_s[1] * 1e3, one_s[2] * 1e3, one_s[0] / decode_s, one_s[1] / decode_s, one_s[2] / decode_s);
  std::printf("prefill  %8.1f ms (1 x %zu)  %6.1f GFLOP/s  %.2f of FMA peak\n", prefill_s * 1e3, ctx,
              prefill_flops / prefill_s / 1e9, prefill_flops / prefill_s / peak);
  return 0;
}
