// Knowledge-distillation divergences between a teacher (target) and a student (draft),
// with gradients, and the expected acceptance rate of speculative decoding.
// Dimension letters: R rows, V vocabulary.
//
// Per row, p = softmax(z_teacher / T), q = softmax(z_student / T):
//   fkl = KL(p || q)   rkl = KL(q || p)   tvd = 1/2 sum |p - q|
//   jsd = beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
// Gradients are d loss / d z_student and include the chain rule's 1/T. With
// r = log(q/p) they are (q - p)/T (fkl), q (r - rkl)/T (rkl), (1 - beta) q (h - KL(q||m))/T
// with h = log(q/m) (jsd), and q (sign(r)/2 - sum q sign(r)/2)/T with sign(0) = 0 (tvd).
//
// Numerics: one pass per row builds both distributions (float32 exponentials, as the
// sampler); a second computes the sums with r in double and every quantity that could
// cancel (q - p, h - C, the masses on each side of p = q) in a form that does not; a
// third writes the gradient. fkl and rkl take both rows in one sweep instead, which also
// sums w r (w = p or q) and so gives the loss without a second pass wherever its float
// error is below 1e-5 of it; other rows go on to the second pass (kd.cc). The
// normalisers' float rounding (about 1e-7) shifts all r by one constant; it is measured
// from sum (q - p) = 0 and corrected to first order.
// With finite logits every divergence is finite: (z - max z)/T is formed in double, so
// no probability that enters a sum is exactly 0 where its partner is not.
#pragma once

#include <cstddef>
#include <cstdint>

#include "params.h"

namespace specula {

enum class Divergence { FKL, RKL, JSD, TVD };

struct KdArgs {
  const float* teacher = nullptr;  // (R, V)
  const float* student = nullptr;  // (R, V)
  size_t rows = 0, vocab = 0;
  Divergence divergence = Divergence::FKL;
  double temperature = 1.0;        // > 0
  double beta = 0.5;               // jsd mixing, in (0, 1)
  const uint8_t* mask = nullptr;   // (R) 1 = include; nullptr = all
  bool scale_t2 = false;           // multiply loss, per-row values and gradient by T^2
  Device device = Device::Cpu;     // backend.h
};

// Returns the mean loss over included rows (0 if none). per_row (R): each row's
// divergence (times T^2 if scale_t2), 0 for excluded rows. grad (R, V) or nullptr:
// d loss / d student, 0 for excluded rows.
double kd_loss(const KdArgs& args, float* per_row, float* grad);

// out (R): sum_x min(p(x), q(x)) for p the target's and q the draft's sampling
// distribution (temperature and filters exactly as in sample/verify).
void acceptance_rate(const float* target, const float* draft, size_t rows, size_t vocab, ParamsView target_params,
                     ParamsView draft_params, float* out, Device device = Device::Cpu);

}  // namespace specula
