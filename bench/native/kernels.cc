// Native microbenchmark of the sampling kernels: verify and sample over
// B in {1, 8, 32, 128}, gamma in {4, 8}, V in {32000, 128256}, f32 logits.
// Throughput is logits bytes / second; the baseline is a pass that reads the same
// bytes on the same threads (read_pass), timed interleaved with the kernel in the same
// run, so the ratio holds on a shared, noisy machine. Medians of repeated runs.
//
//   npm run bench:native [-- --threads 2 --quick --filters]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "verify_case.h"
#include "params.h"
#include "sampling.h"
#include "simd.h"
#include "thread_pool.h"

using namespace specula;
using bench::Clock;
using bench::median;
using bench::seconds_since;

namespace {

struct Timing {
  double kernel_s, baseline_s;
};

// Interleaves kernel and baseline runs until both have `min_reps` and `min_time` seconds.
template <class K, class Bl>
Timing measure(K kernel, Bl baseline, int min_reps, double min_time) {
  std::vector<double> tk, tb;
  kernel();
  baseline();
  const auto start = Clock::now();
  while (int(tk.size()) < min_reps || seconds_since(start) < min_time) {
    auto t = Clock::now();
    baseline();
    tb.push_back(seconds_since(t));
    t = Clock::now();
    kernel();
    tk.push_back(seconds_since(t));
    if (tk.size() >= 200) break;
  }
  return Timing{median(tk), median(tb)};
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool quick = false, filters = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--filters")) filters = true;
  }
  ThreadPool::global().set_threads(threads);
  std::printf("specula kernel benchmark: %d threads, %s kernels, f32 logits%s\n", threads, simd::kernels().name,
              filters ? ", target top-p 0.9 + top-k 50, draft top-k 50" : ", filters off");
  std::printf("GB/s = logits bytes / median time; baseline = a read of the same bytes on the same threads, same run\n\n");
  std::printf("| kernel | B | gamma | V | MB | ms | GB/s | baseline GB/s | ratio | accepted/row |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");

  const std::vector<size_t> Bs = quick ? std::vector<size_t>{1, 32} : std::vector<size_t>{1, 8, 32, 128};
  const std::vector<size_t> Gs = {4, 8};
  const std::vector<size_t> Vs = {32000, 128256};
  const SamplingParams tp{1.0, filters ? 50 : 0, filters ? 0.9 : 1.0, 0.0};
  const SamplingParams dp{1.0, filters ? 50 : 0, 1.0, 0.0};
  for (size_t V : Vs) {
    for (size_t G : Gs) {
      for (size_t B : Bs) {
        bench::VerifyCase vc(B, G, V, &tp, &dp, [](const SampleArgs& a, int32_t* out) { sample(a, out); });
        const float* arrays[2] = {vc.target.data(), vc.draft.data()};
        const size_t lengths[2] = {vc.target.size(), vc.draft.size()};
        volatile double sink = 0;
        const double min_time = quick ? 0.3 : 1.0;
        const Timing tv = measure([&] { verify(vc.verify, vc.out); }, [&] { sink = sink + read_pass(arrays, lengths, 2); }, 5, min_time);
        const double bytes_v = vc.logit_bytes();
        std::printf("| verify | %zu | %zu | %zu | %.0f | %.3f | %.1f | %.1f | %.2f | %.2f |\n", B, G, V, bytes_v / 1e6,
                    tv.kernel_s * 1e3, bytes_v / tv.kernel_s / 1e9, bytes_v / tv.baseline_s / 1e9,
                    tv.baseline_s / tv.kernel_s, vc.mean_accepted());

        std::vector<int32_t> out(B * G);
        const Timing ts = measure([&] { sample(vc.sample, out.data()); }, [&] { sink = sink + read_pass(&arrays[1], &lengths[1], 1); }, 5, min_time);
        const double bytes_s = 4.0 * double(vc.draft.size());
        std::printf("| sample | %zu | %zu | %zu | %.0f | %.3f | %.1f | %.1f | %.2f | |\n", B * G, size_t(0), V, bytes_s / 1e6,
                    ts.kernel_s * 1e3, bytes_s / ts.kernel_s / 1e9, bytes_s / ts.baseline_s / 1e9, ts.baseline_s / ts.kernel_s);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
