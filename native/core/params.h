// Sampling parameters of one row and their validation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace specula {

// temperature 0 = greedy. A filter that is off has its neutral value:
// top_k = 0, top_p = 1, min_p = 0.
struct SamplingParams {
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
};

// Where a kernel runs (backend.h): the CPU, the CUDA backend, or CUDA when it is
// available and the inputs are large enough to pay for the copies.
enum class Device { Cpu = 0, Cuda = 1, Auto = 2 };

// One value for all rows (size 1) or one per row.
struct ParamsView {
  const SamplingParams* data = nullptr;
  size_t size = 0;
  const SamplingParams& operator[](size_t row) const { return size == 1 ? data[0] : data[row]; }
};

// Throws Error(E_VALUE) naming `name` (e.g. "params[3]") when a field is out of range:
// temperature finite and >= 0; top_k >= 0 (0 = off); top_p in (0, 1]; min_p in [0, 1).
void validate_params(const SamplingParams& p, const std::string& name);

// Checks that `view` holds 1 or `rows` entries (E_SHAPE) and that every entry is valid.
void validate_params(const ParamsView& view, size_t rows, const std::string& name);

}  // namespace specula
