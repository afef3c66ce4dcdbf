// bf16 matrix products on Intel AMX (Sapphire Rapids and later).
//
// The weights stay as mapped ([N, K] bf16, rows of K): a 16-row block of them is the A
// tile of TDPBF16PS, so nothing is repacked. Each activation x (f32) is split into P bf16
// pieces, laid out as the B tile's columns: column P m + p holds piece p of row m. Every
// product of a bf16 weight and a bf16 piece is exact in f32, so each output is P
// f32-accumulated dot products, summed as hi + lo or (hi + mid) + lo:
// - P = 2 (the default): hi = x rounded to bf16 (to nearest, ties to even), lo = x - hi
//   rounded to bf16: 16-17 significant bits, |x - hi - lo| <= 2^-16 |x|. Products come
//   within ~5e-7 of sum |w x| (rms ~1.4e-7; the FMA kernels: ~4e-8 and ~8e-9). Still
//   ~2^8 finer than rounding activations to bf16, as bf16 CPU paths commonly do.
// - P = 3 (SPECULA_AMX=3): x = hi + mid + lo exactly (truncations, 8 + 8 + 8 significant
//   bits): the same accuracy as the f32 FMA kernels, and 1.5 x the tile products of P = 2.
//
// Batch invariance holds: whether a product runs here depends only on the CPU, the
// weight type and K (never on the number of rows), and each output column is computed on
// its own, in the same order whatever the other rows are. The results differ from the
// FMA kernels' by rounding, so on a CPU with AMX the avx2 and avx512 levels agree
// bitwise on bf16 weights only with AMX off (set_enabled(false), or SPECULA_AMX=0).
#pragma once

#include <cstddef>
#include <cstdint>

#include "simd.h"

namespace specula::amx {

// The CPU has AMX-TILE and AMX-BF16 and the OS granted this process the tile state.
bool available();
// available() and not turned off (SPECULA_AMX=0 in the environment, or set_enabled).
bool enabled();
// Turns the AMX path on (where available) or off for the whole process; returns the
// previous value of enabled(). For tests and benchmarks: not for use while products run.
bool set_enabled(bool on);

// How many bf16 pieces each activation is split into: 2 (the default) or 3
// (SPECULA_AMX=3 in the environment, or set_pieces). set_pieces ignores other values and
// returns the previous count; like set_enabled, it is for tests and benchmarks, not for
// use while products run (packed_size, pack and matmul must see the same count).
int pieces();
int set_pieces(int p);

// Whether this product runs on AMX: enabled(), bf16 weights and K a multiple of 32.
bool usable(const simd::MatmulArgs& a);

// The packed activations of a product: rows x k floats (row stride ldx) as bf16 pieces,
// packed_size() elements at `out`, which should be 64-byte aligned: each B tile row is
// then one cache line (unaligned, the 40-row products measured 1.7x slower).
// pack() writes the k blocks (32 values of k each) [kb0, kb1) of it: disjoint ranges may
// be packed by different threads.
size_t packed_size(size_t rows, size_t k);
void pack(const float* x, size_t ldx, size_t rows, size_t k, uint16_t* out, size_t kb0 = 0, size_t kb1 = SIZE_MAX);

// y[r, n] for n in [n0, n1) (n0 a multiple of 16; n1 <= n, the matrix's row count) from
// the packed activations: as simd::Kernels::matmul, bias and accumulate included.
void matmul(const simd::MatmulArgs& a, const uint16_t* packed, size_t n0, size_t n1, size_t n);

}  // namespace specula::amx
