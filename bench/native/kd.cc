// Native benchmark of the KD kernels: rows in {256, 4096}, V in {32000, 128256}, each
// divergence, loss only and with gradient, at T = 1 (student = teacher + N(0, 1) noise).
// Throughput is teacher + student logits bytes / second against a read of the same
// bytes on the same threads, timed interleaved in the same run; medians.
//
//   npm run bench:native -- kd [--threads 2] [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kd.h"
#include "sampling.h"
#include "simd.h"
#include "thread_pool.h"

using namespace specula;
using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  ThreadPool::global().set_threads(threads);
  std::printf("specula KD benchmark: %d threads, %s kernels, T = 1, student = teacher + N(0, 1)\n", threads,
              simd::kernels().name);
  std::printf("GB/s = teacher + student bytes / median time; baseline = a read of the same bytes, same threads, same run\n\n");
  std::printf("| divergence | rows | V | MB | loss ms | loss GB/s | ratio | +grad ms | +grad GB/s | ratio | baseline GB/s |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::vector<float> table(1 << 20);
  {
    std::mt19937 gen(1);
    std::normal_distribution<float> n01;
    for (float& t : table) t = n01(gen);
  }
  const std::vector<size_t> Rs = quick ? std::vector<size_t>{256} : std::vector<size_t>{256, 4096};
  for (size_t V : {size_t(32000), size_t(128256)}) {
    for (size_t R : Rs) {
      std::vector<float> zt(R * V), zs(R * V), grad(R * V), per_row(R);
      uint64_t s = R * 31 + V;
      for (size_t i = 0; i < zt.size(); i += 4096) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const size_t off = size_t(s >> 40) % (table.size() - 8192), n = std::min<size_t>(4096, zt.size() - i);
        for (size_t j = 0; j < n; ++j) {
          zt[i + j] = 3 * table[off + j];
          zs[i + j] = zt[i + j] + table[off + 4096 + j];
        }
      }
      const float* arrays[2] = {zt.data(), zs.data()};
      const size_t lengths[2] = {zt.size(), zs.size()};
      const double bytes = 8.0 * double(R * V);
      for (Divergence d : {Divergence::FKL, Divergence::RKL, Divergence::JSD, Divergence::TVD}) {
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
        static const char* names[] = {"fkl", "rkl", "jsd", "tvd"};
        std::printf("| %s | %zu | %zu | %.0f | %.2f | %.1f | %.2f | %.2f | %.1f | %.2f | %.1f |\n", names[int(d)], R, V,
                    bytes / 1e6, l * 1e3, bytes / l / 1e9, b / l, g * 1e3, bytes / g / 1e9, b / g, bytes / b / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
