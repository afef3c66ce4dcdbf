// GPU benchmark of the CUDA kernels (a build with -DSPECULA_CUDA=ON, on a machine with a
// GPU): verify over B in {1, 64, 256}, gamma in {4, 8}, V in {32000, 128256}, f32 logits,
// T = 1, filters off (--filters: target top-p 0.9 + top-k 50, draft top-k 50), draft
// tokens sampled from the draft rows; then sample, acceptance_rate and kd_loss (fkl, with
// and without the gradient) over the B*gamma draft rows of the same inputs.
//
// kernel us is the mean of back-to-back launches on device-resident inputs (CUDA events;
// the host-device copies are timed apart and reported as copy-in / copy-out ms). GB/s is
// bytes moved by the kernel (logits read, plus the gradient written) / kernel time. The
// baseline is a device-to-device cudaMemcpy that moves as many bytes (half read, half
// written), measured in the same run: the bandwidth a streaming kernel can reach.
//
//   bench_cuda [--quick] [--filters] [--json]
//
// --json prints one JSON object per line (bench/cuda/torch_compare.py reads them).
// Exits 77 when the CUDA backend is not built or no GPU is available.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "bench_util.h"
#include "kd.h"
#include "params.h"
#include "sampling.h"
#include "verify_case.h"

using namespace specula;

namespace {

bool json = false;

struct Row {
  const char* kernel;
  size_t B, G, V, rows;
  double bytes;  // moved by the kernel
  cuda::Timing t;
  double accepted_per_row;  // verify only; < 0 otherwise
};

void print(const Row& r) {
  const double copy_gbps = cuda::copy_bandwidth(size_t(r.bytes / 2));  // moves r.bytes: half read, half written
  const double gbps = r.bytes / (r.t.kernel_ms * 1e-3) / 1e9;
  if (json) {
    std::printf(
        "{\"kernel\":\"%s\",\"B\":%zu,\"gamma\":%zu,\"V\":%zu,\"rows\":%zu,\"bytes\":%.0f,\"kernel_us\":%.3f,"
        "\"gbps\":%.1f,\"copy_gbps\":%.1f,\"ratio\":%.4f,\"copy_in_ms\":%.3f,\"copy_out_ms\":%.3f,"
        "\"repeats\":%d,\"accepted_per_row\":%.4f}\n",
        r.kernel, r.B, r.G, r.V, r.rows, r.bytes, r.t.kernel_ms * 1e3, gbps, copy_gbps, gbps / copy_gbps,
        r.t.copy_in_ms, r.t.copy_out_ms, r.t.kernel_repeats, r.accepted_per_row);
  } else {
    std::printf("| %s | %zu | %zu | %zu | %zu | %.1f | %.1f | %.0f | %.0f | %.2f | %.2f | %.2f |", r.kernel, r.B, r.G,
                r.V, r.rows, r.bytes / 1e6, r.t.kernel_ms * 1e3, gbps, copy_gbps, gbps / copy_gbps,
                r.t.copy_in_ms, r.t.copy_out_ms);
    if (r.accepted_per_row >= 0) std::printf(" %.2f |\n", r.accepted_per_row);
    else std::printf(" |\n");
  }
  std::fflush(stdout);
}

// One call to find the kernel time (and to load the module: CUDA loads kernels lazily),
// then one with enough back-to-back launches for ~20 ms of kernel time.
template <class Call>
cuda::Timing timed(Call call) {
  cuda::Timing t;
  call(&t);
  t.kernel_repeats = int(std::clamp(20.0 / std::max(t.kernel_ms, 1e-3), 5.0, 500.0));
  call(&t);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, filters = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--filters")) filters = true;
    else if (!std::strcmp(argv[i], "--json")) json = true;
    else {
      std::fprintf(stderr, "bench_cuda: unknown argument %s (expected --quick, --filters, --json)\n", argv[i]);
      return 2;
    }
  }
  const BackendStatus st = cuda_status();
  if (!st.available) {
    std::fprintf(stderr, "bench_cuda: skipped, the CUDA backend is unavailable: %s\n", st.reason.c_str());
    return 77;
  }
  if (!json) {
    std::printf("specula CUDA kernel benchmark on %s, f32 logits, %s\n", st.device.c_str(),
                filters ? "target top-p 0.9 + top-k 50, draft top-k 50" : "filters off");
    std::printf("kernel us: mean of back-to-back launches on device-resident inputs; GB/s = bytes moved / kernel "
                "time; copy GB/s = a device-to-device cudaMemcpy moving as many bytes (half read, half written), same run\n\n");
    std::printf("| kernel | B | gamma | V | rows | MB | kernel us | GB/s | copy GB/s | ratio | copy-in ms | "
                "copy-out ms | accepted/row |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  }

  const std::vector<size_t> Bs = quick ? std::vector<size_t>{1, 64} : std::vector<size_t>{1, 64, 256};
  const std::vector<size_t> Gs = {4, 8};
  const std::vector<size_t> Vs = {32000, 128256};
  const SamplingParams tp{1.0, filters ? 50 : 0, filters ? 0.9 : 1.0, 0.0};
  const SamplingParams dp{1.0, filters ? 50 : 0, 1.0, 0.0};
  for (size_t V : Vs) {
    for (size_t G : Gs) {
      for (size_t B : Bs) {
        bench::VerifyCase vc(B, G, V, &tp, &dp, [](const SampleArgs& a, int32_t* out) { cuda::sample(a, out); });
        const size_t R = B * G;
        const cuda::Timing tv = timed([&](cuda::Timing* t) { cuda::verify(vc.verify, vc.out, t); });
        print(Row{"verify", B, G, V, B * (2 * G + 1), vc.logit_bytes(), tv, vc.mean_accepted()});

        const double bytes_d = 4.0 * double(vc.draft.size());
        std::vector<int32_t> out(R);
        const cuda::Timing ts = timed([&](cuda::Timing* t) { cuda::sample(vc.sample, out.data(), t); });
        print(Row{"sample", B, G, V, R, bytes_d, ts, -1});

        if (B == 1) continue;  // the row kernels below at the batched sizes only
        // acceptance and KD over the B*gamma draft rows against the first gamma target rows of each sequence,
        // packed contiguously.
        std::vector<float> tpacked(R * V);
        for (size_t b = 0; b < B; ++b)
          std::copy_n(vc.target.data() + b * (G + 1) * V, G * V, tpacked.data() + b * G * V);
        std::vector<float> arate(R);
        const cuda::Timing ta = timed([&](cuda::Timing* t) {
          cuda::acceptance_rate(tpacked.data(), vc.draft.data(), R, V, ParamsView{&tp, 1}, ParamsView{&dp, 1},
                                arate.data(), t);
        });
        print(Row{"acceptanceRate", B, G, V, R, 2 * bytes_d, ta, -1});

        KdArgs ka;
        ka.teacher = tpacked.data();
        ka.student = vc.draft.data();
        ka.rows = R;
        ka.vocab = V;
        ka.divergence = Divergence::FKL;
        std::vector<float> per_row(R), grad(R * V);
        const cuda::Timing tk = timed([&](cuda::Timing* t) { cuda::kd_loss(ka, per_row.data(), nullptr, t); });
        print(Row{"kdLoss fkl", B, G, V, R, 2 * bytes_d, tk, -1});
        const cuda::Timing tg = timed([&](cuda::Timing* t) { cuda::kd_loss(ka, per_row.data(), grad.data(), t); });
        print(Row{"kdLoss fkl+grad", B, G, V, R, 3 * bytes_d, tg, -1});
      }
    }
  }
  return 0;
}
