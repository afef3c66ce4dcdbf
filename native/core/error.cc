#include "error.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace specula {

const char* code_name(Code code) noexcept {
  switch (code) {
    case Code::Arg: return "E_ARG";
    case Code::Shape: return "E_SHAPE";
    case Code::Value: return "E_VALUE";
    case Code::Format: return "E_FORMAT";
    case Code::IO: return "E_IO";
    case Code::Unsupported: return "E_UNSUPPORTED";
    case Code::State: return "E_STATE";
    case Code::Aborted: return "E_ABORTED";
  }
  return "E_STATE";
}

std::string js_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[40];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.17g", v);
    // Shortest representation that round-trips, as JavaScript prints it.
    for (int prec = 1; prec <= 17; ++prec) {
      char tmp[40];
      std::snprintf(tmp, sizeof tmp, "%.*g", prec, v);
      if (std::strtod(tmp, nullptr) == v) {
        std::snprintf(buf, sizeof buf, "%s", tmp);
        break;
      }
    }
  }
  return buf;
}

}  // namespace specula
