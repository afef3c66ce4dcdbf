#include "simd.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace specula::simd {
namespace avx512 { const Kernels* table(); }
namespace avx2 { const Kernels* table(); }
namespace portable { const Kernels* table(); }

namespace {

bool cpu_has(const char* level) {
  if (std::strcmp(level, "portable") == 0) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0).
  if (std::strcmp(level, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (std::strcmp(level, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return false;
}

const Kernels* best(const char* cap) {
  // Levels from the highest down; `cap` (from SPECULA_SIMD) skips the higher ones.
  static const char* const kLevels[] = {"avx512", "avx2", "portable"};
  bool allowed = cap == nullptr || *cap == 0;
  for (const char* level : kLevels) {
    if (!allowed && std::strcmp(level, cap) == 0) allowed = true;
    if (!allowed) continue;
    if (const Kernels* k = kernels_for(level)) return k;
  }
  return portable::table();
}

std::atomic<const Kernels*> g_current{nullptr};

constexpr PrefetchLevel kPrefetchLevels[] = {PrefetchLevel::L1, PrefetchLevel::L2};

PrefetchLevel default_prefetch() {
  if (const char* e = std::getenv("SPECULA_PREFETCH"))
    for (const PrefetchLevel l : kPrefetchLevels)
      if (std::strcmp(e, prefetch_name(l)) == 0) return l;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_is("amd")) return PrefetchLevel::L2;
#endif
  return PrefetchLevel::L1;
}

std::atomic<int> g_prefetch{0};  // 0: not chosen yet

}  // namespace

const Kernels* kernels_for(const char* level) {
  if (!cpu_has(level)) return nullptr;
  if (std::strcmp(level, "avx512") == 0) return avx512::table();
  if (std::strcmp(level, "avx2") == 0) return avx2::table();
  if (std::strcmp(level, "portable") == 0) return portable::table();
  return nullptr;
}

const Kernels& kernels() {
  const Kernels* k = g_current.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = best(std::getenv("SPECULA_SIMD"));
    g_current.store(k, std::memory_order_release);
  }
  return *k;
}

PrefetchLevel matmul_prefetch() {
  int v = g_prefetch.load(std::memory_order_relaxed);
  if (v == 0) {
    v = int(default_prefetch());
    g_prefetch.store(v, std::memory_order_relaxed);
  }
  return PrefetchLevel(v);
}

const char* prefetch_name(PrefetchLevel level) { return level == PrefetchLevel::L2 ? "l2" : "l1"; }

void set_matmul_prefetch(PrefetchLevel level) { g_prefetch.store(int(level), std::memory_order_relaxed); }

bool set_level(const char* level) {
  const Kernels* k = kernels_for(level);
  if (k == nullptr) return false;
  g_current.store(k, std::memory_order_release);
  return true;
}

}  // namespace specula::simd
