#include "params.h"

#include <cmath>

#include "error.h"

namespace specula {

void validate_params(const SamplingParams& p, const std::string& name) {
  if (!std::isfinite(p.temperature) || p.temperature < 0)
    throw Error(Code::Value, name + ".temperature: expected a finite number >= 0, received " +
                                 js_number(p.temperature));
  if (p.top_k < 0)
    throw Error(Code::Value, name + ".topK: expected an integer >= 1, received " +
                                 js_number(double(p.top_k)));
  if (!(p.top_p > 0 && p.top_p <= 1))
    throw Error(Code::Value,
                name + ".topP: expected a number in (0, 1], received " + js_number(p.top_p));
  if (!(p.min_p >= 0 && p.min_p < 1))
    throw Error(Code::Value,
                name + ".minP: expected a number in [0, 1), received " + js_number(p.min_p));
}

void validate_params(const ParamsView& view, size_t rows, const std::string& name) {
  if (view.data == nullptr || (view.size != 1 && view.size != rows))
    throw Error(Code::Shape, name + ": expected one SamplingParams or " + std::to_string(rows) +
                                 " (one per row), received " + std::to_string(view.size));
  for (size_t i = 0; i < view.size; ++i)
    validate_params(view.data[i], view.size == 1 ? name : name + "[" + std::to_string(i) + "]");
}

}  // namespace specula
