#include "backend.h"

#include "error.h"

namespace specula {

const char* device_name(Device device) {
  switch (device) {
    case Device::Cpu: return "cpu";
    case Device::Cuda: return "cuda";
    case Device::Auto: return "auto";
  }
  return "?";
}

bool use_cuda(Device device, size_t bytes) {
  if (device == Device::Cpu) return false;
  const BackendStatus s = cuda_status();
  if (device == Device::Cuda) {
    if (!s.available)
      throw Error(Code::Unsupported, "device: expected an available backend, received 'cuda' (" + s.reason +
                                         "; backends() reports what is built and available)");
    return true;
  }
  return s.available && bytes >= kCudaAutoBytes;
}

#ifndef SPECULA_WITH_CUDA
// The CPU-only build: no CUDA backend. use_cuda() never selects it.
BackendStatus cuda_status() {
  BackendStatus s;
  s.reason = "not built (build with: npm run build:cmake -- -DSPECULA_CUDA=ON)";
  return s;
}

namespace cuda {
namespace {
[[noreturn]] void unavailable() { throw Error(Code::Unsupported, "the CUDA backend is not built"); }
}  // namespace
void sample(const SampleArgs&, int32_t*, Timing*) { unavailable(); }
void probabilities(const float*, size_t, size_t, ParamsView, float*, Timing*) { unavailable(); }
void verify(const VerifyArgs&, const VerifyOut&, Timing*) { unavailable(); }
double kd_loss(const KdArgs&, float*, float*, Timing*) { unavailable(); }
void acceptance_rate(const float*, const float*, size_t, size_t, ParamsView, ParamsView, float*, Timing*) {
  unavailable();
}
double copy_bandwidth(size_t) { unavailable(); }
}  // namespace cuda
#endif

}  // namespace specula
