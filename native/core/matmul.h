// Shared by the runtime (model.cc) and training (train.cc): several independent matrix
// products (simd.h MatmulArgs) run as one parallel_for over blocks of their columns.
// Results do not depend on the threads (each output element has one fixed order).
#pragma once

#include <cstddef>
#include <initializer_list>

#include "simd.h"

namespace specula {

// list[i] has ns[i] output columns.
void run_matmuls(std::initializer_list<simd::MatmulArgs> list, std::initializer_list<size_t> ns);

}  // namespace specula
