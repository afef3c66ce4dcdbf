// Minimal test harness for the standalone C++ tests (no dependencies): CHECK-style
// macros that count failures and print the expression, and a main() runner.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace check {

inline int& failures() {
  static int n = 0;
  return n;
}
struct Case {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Case>& cases() {
  static std::vector<Case> c;
  return c;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};
inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
}
inline std::string show(const std::string& s) { return "\"" + s + "\""; }
template <class T>
std::string show(const T& v) {
  return std::to_string(v);
}
inline bool near(double a, double b, double rel, double abs_tol = 0) {
  return std::fabs(a - b) <= abs_tol + rel * std::fmax(std::fabs(a), std::fabs(b));
}

}  // namespace check

#define TEST_CASE(name)                                             \
  static void name();                                               \
  static check::Register register_##name(#name, name);              \
  static void name()

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) check::fail(__FILE__, __LINE__, #cond);                     \
  } while (0)

#define CHECK_MSG(cond, msg)                                                             \
  do {                                                                                   \
    if (!(cond)) check::fail(__FILE__, __LINE__, std::string(#cond) + " -- " + (msg));   \
  } while (0)

#define CHECK_EQ(a, b)                                                                       \
  do {                                                                                       \
    const auto va_ = (a);                                                                    \
    const auto vb_ = (b);                                                                    \
    if (!(va_ == vb_))                                                                       \
      check::fail(__FILE__, __LINE__, std::string(#a " == " #b " (") + check::show(va_) + \
                                          " vs " + check::show(vb_) + ")");              \
  } while (0)

#define CHECK_NEAR(a, b, rel, abs_tol)                                                           \
  do {                                                                                           \
    const double va_ = (a), vb_ = (b);                                                           \
    if (!check::near(va_, vb_, rel, abs_tol))                                                    \
      check::fail(__FILE__, __LINE__, std::string(#a " ~ " #b " (") + std::to_string(va_) +     \
                                          " vs " + std::to_string(vb_) + ")");                  \
  } while (0)

// Expects `stmt` to throw specula::Error with the given code.
#define CHECK_THROWS_CODE(stmt, expected_code)                                                   \
  do {                                                                                           \
    bool thrown_ = false;                                                                        \
    try {                                                                                        \
      stmt;                                                                                      \
    } catch (const specula::Error& e_) {                                                         \
      thrown_ = true;                                                                            \
      if (e_.code() != (expected_code))                                                          \
        check::fail(__FILE__, __LINE__, std::string("wrong code for ") + #stmt + ": " + e_.what()); \
    }                                                                                            \
    if (!thrown_) check::fail(__FILE__, __LINE__, std::string("no exception from ") + #stmt);   \
  } while (0)

#define CHECK_MAIN()                                                               \
  int main() {                                                                     \
    for (auto& c : check::cases()) {                                               \
      const int before = check::failures();                                        \
      c.fn();                                                                      \
      std::printf("%s %s\n", check::failures() == before ? "ok  " : "FAIL", c.name); \
    }                                                                              \
    std::printf("%d failure(s)\n", check::failures());                             \
    return check::failures() == 0 ? 0 : 1;                                         \
  }
