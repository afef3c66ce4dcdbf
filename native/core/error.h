// Errors of the core library. Core code never aborts the process: it throws
// specula::Error, which carries one of the codes below; the addon turns it into a
// JavaScript SpeculaError with the same code and message.
#pragma once

#include <stdexcept>
#include <string>

namespace specula {

enum class Code { Arg, Shape, Value, Format, IO, Unsupported, State, Aborted };

// "E_ARG", "E_SHAPE", ... as seen from JavaScript.
const char* code_name(Code code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

// Formats a double the way JavaScript would show it in an error message
// (NaN, Infinity, -Infinity, integers without a decimal point).
std::string js_number(double v);

}  // namespace specula
