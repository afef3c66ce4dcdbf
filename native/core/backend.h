// Backends of the kernels: the CPU (sampling.h, kd.h) and CUDA (native/cuda). The core
// functions take a Device; after checking their arguments on the host they call
// use_cuda() and, where it says so, the cuda:: version below, which has the same
// semantics and the same Philox streams (philox.h) and differs from the CPU only by
// rounding (decisions within ~1e-6 of a boundary may go the other way).
//
// A build without SPECULA_WITH_CUDA has the stubs of backend.cc: cuda_status() says
// "not built". A CUDA build links cudart statically, so it loads without a driver; the
// first call of cuda_status() asks cudart for a device and remembers the answer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kd.h"
#include "params.h"
#include "sampling.h"

namespace specula {

struct BackendStatus {
  bool built = false;      // compiled with the CUDA backend
  bool available = false;  // built, and a device and driver answered
  std::string reason;      // why not available: "not built", "no driver", "no device", ...
  std::string device;      // the device's name and compute capability, when available
};

// The CUDA backend's status (cached after the first call; thread-safe).
BackendStatus cuda_status();

// Auto runs on CUDA from this many bytes of input logits on: below it the host-device
// copies cost more than the CPU kernels (a row of 32000 logits is 128 KB).
constexpr size_t kCudaAutoBytes = size_t(4) << 20;

// Whether a kernel with `bytes` of input logits runs on CUDA: Cpu never; Cuda always,
// or E_UNSUPPORTED naming why the backend is unavailable; Auto when it is available
// and bytes >= kCudaAutoBytes.
bool use_cuda(Device device, size_t bytes);

// "cpu", "cuda", "auto".
const char* device_name(Device device);

namespace cuda {
// The CUDA versions of the kernels, called after the host checks of the CPU functions
// (params, lengths, token ids); non-finite logits are found on the device and reported
// with the CPU's messages. Inputs are copied in and outputs out on every call.
struct Timing {
  // In: launch the kernels this many times on the same inputs (a benchmark's repeats;
  // every launch writes the same outputs). kernel_ms is then the mean per launch.
  int kernel_repeats = 1;
  // Out: the three phases of the call, in milliseconds (CUDA events).
  double copy_in_ms = 0, kernel_ms = 0, copy_out_ms = 0;
};
void sample(const SampleArgs& args, int32_t* out, Timing* timing = nullptr);
void probabilities(const float* logits, size_t rows, size_t vocab, ParamsView params, float* out,
                   Timing* timing = nullptr);
void verify(const VerifyArgs& args, const VerifyOut& out, Timing* timing = nullptr);
double kd_loss(const KdArgs& args, float* per_row, float* grad, Timing* timing = nullptr);
void acceptance_rate(const float* target, const float* draft, size_t rows, size_t vocab, ParamsView target_params,
                     ParamsView draft_params, float* out, Timing* timing = nullptr);
// Device-to-device copy bandwidth in GB/s over `bytes` (the benchmark's baseline).
double copy_bandwidth(size_t bytes);
}  // namespace cuda

}  // namespace specula
