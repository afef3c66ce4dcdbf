// Native benchmark of the KD kernels: rows in {256, 4096}, V in {32000, 128256}, each
// divergence, loss only and with gradient, at T = 1 (student = teacher + N(0, 1) noise).
// Throughput is teacher + student logits bytes / second against a read of the same
// bytes on the same threads, timed interleaved in the same run; medians.
//
//   npm run bench:native -- kd [--threads 2] [--quick] [--only fkl|rkl|jsd|tvd]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "bench_util.h"
#include "kd.h"
#include "sampling.h"
#include "simd.h"
#include "thread_pool.h"

using namespace specula;
using bench::Clock;
using bench::median;
using bench::seconds_since;

int main(int argc, char** argv) {
  int threads = 2;
  bool quick = false;
  const char* only = nullptr;  // one divergence (profiling)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
  }
  ThreadPool::global().set_threads(threads);
  std::printf("specula KD benchmark: %d threads, %s kernels, T = 1, student = teacher + N(0, 1)\n", threads,
              simd::kernels().name);
  std::printf("GB/s = teacher + student bytes / median time; baseline = a read of the same bytes, same threads, same run\n\n");
  std::printf("| divergence | rows | V | MB | loss ms | loss GB/s | ratio | +grad ms | +grad GB/s | ratio | baseline GB/s |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  const std::vector<size_t> Rs = quick ? std::vector<size_t>{256} : std::vector<size_t>{256, 4096};
  for (size_t V : {size_t(32000), size_t(128256)}) {
    for (size_t R : Rs) {
      std::vector<float> zt(R * V), zs(R * V), grad(R * V), per_row(R);
      bench::fill_normal(zt.data(), zt.size(), 3.0f, R * 31 + V);
      bench::fill_normal(zs.data(), zs.size(), 1.0f, R * 37 + V * 3);
      for (size_t i = 0; i < zs.size(); ++i) zs[i] += zt[i];
      const float* arrays[2] = {zt.data(), zs.data()};
      const size_t lengths[2] = {zt.size(), zs.size()};
      const double bytes = 8.0 * double(R * V);
      static const char* names[] = {"fkl", "rkl", "jsd", "tvd"};
      for (Divergence d : {Divergence::FKL, Divergence::RKL, Divergence::JSD, Divergence::TVD}) {
        if (only != nullptr && std::strcmp(only, names[int(d)]) != 0) continue;
        KdArgs a;
        a.teacher = zt.data();
        a.student = zs.data();
        a.rows = R;
        a.vocab = V;
        a.divergence = d;
        volatile double sink = 0;
        std::vector<double> tl, tg, tb;
        const int reps = quick || R == 4096 ? 3 : 5;
        kd_loss(a, per_row.data(), nullptr);
        for (int rep = 0; rep < reps; ++rep) {
          auto t = Clock::now();
          sink = sink + read_pass(arrays, lengths, 2);
          tb.push_back(seconds_since(t));
          t = Clock::now();
          sink = sink + kd_loss(a, per_row.data(), nullptr);
          tl.push_back(seconds_since(t));
          t = Clock::now();
          sink = sink + kd_loss(a, per_row.data(), grad.data());
          tg.push_back(seconds_since(t));
        }
        const double l = median(tl), g = median(tg), b = median(tb);
        std::printf("| %s | %zu | %zu | %.0f | %.2f | %.1f | %.2f | %.2f | %.1f | %.2f | %.1f |\n", names[int(d)], R, V,
                    bytes / 1e6, l * 1e3, bytes / l / 1e9, b / l, g * 1e3, bytes / g / 1e9, b / g, bytes / b / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
