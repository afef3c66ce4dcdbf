// Counter-based randomness: Philox4x32-10 (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC 2011), exactly as in Random123.
//
// THE ONE PLACE that defines how specula turns bits into uniforms. The TypeScript
// reference (src/reference/philox.ts) and the CUDA backend follow this text.
//
//   key     = (seed & 0xffffffff, seed >> 32)                    seed: uint64, per sequence
//   counter = (pos & 0xffffffff, pos >> 32, draw, domain)         pos: uint64 = offset + position
//   (r0, r1, r2, r3) = philox4x32_10(counter, key)
//   k       = (r0 >> 6) * 2^26 + (r1 >> 6)                        52 random bits
//   u       = (2k + 1) * 2^-53                                    a double in the open interval (0, 1)
//
// u is exact in double precision; it lies in [2^-53, 1 - 2^-53]. `draw` enumerates the draws
// of one (sequence, position, domain); every kernel so far uses draw 0. `domain` keeps the
// streams of different decisions disjoint, so that no uniform is ever used twice:
//   0 = sample   (sample(): the engine draws draft tokens here)
//   1 = accept   (verify(): the test u < p(x)/q(x) of a drafted token)
//   2 = emit     (verify(): the residual token after a rejection, or the bonus token)
#pragma once

#include <cstdint>

namespace specula::rng {

enum Domain : uint32_t { kSample = 0, kAccept = 1, kEmit = 2 };

struct Block {
  uint32_t v[4];
};

inline Block philox4x32_10(Block ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += W0;
      k1 += W1;
    }
    const uint64_t p0 = uint64_t(M0) * ctr.v[0];
    const uint64_t p1 = uint64_t(M1) * ctr.v[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    ctr = Block{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The uniform of (seed, pos, draw, domain), as documented above.
inline double uniform(uint64_t seed, uint64_t pos, uint32_t draw, Domain domain) {
  const Block r = philox4x32_10(Block{{uint32_t(pos), uint32_t(pos >> 32), draw, uint32_t(domain)}},
                                uint32_t(seed), uint32_t(seed >> 32));
  const uint64_t k = (uint64_t(r.v[0] >> 6) << 26) | uint64_t(r.v[1] >> 6);
  return double(2 * k + 1) * 0x1p-53;
}

}  // namespace specula::rng
