// Philox4x32-10 against Random123's known-answer vectors, and the uniform conversion.
#include <cstdint>

#include "check.h"
#include "philox.h"

using specula::rng::Block;
using specula::rng::philox4x32_10;

TEST_CASE(known_answers) {
  // Random123 kat_vectors: philox4x32 10 rounds.
  struct Kat {
    Block ctr;
    uint32_t k0, k1;
    Block out;
  } kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
       {{0xd16cfe09u, 0x94fdcceb, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) {
    const Block r = philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; ++i) CHECK_EQ(r.v[i], k.out.v[i]);
  }
}

TEST_CASE(uniform_is_open_and_matches_definition) {
  // u = (2k + 1) 2^-53 with k = (r0 >> 6) 2^26 + (r1 >> 6); key = seed halves, counter =
  // (pos lo, pos hi, draw, domain).
  const uint64_t seed = 0x0123456789abcdefull, pos = 0x100000002ull;
  const Block r = philox4x32_10(Block{{2u, 1u, 7u, 2u}}, 0x89abcdefu, 0x01234567u);
  const uint64_t k = (uint64_t(r.v[0] >> 6) << 26) | (r.v[1] >> 6);
  CHECK(specula::rng::uniform(seed, pos, 7, specula::rng::kEmit) == double(2 * k + 1) / 9007199254740992.0);
  double lo = 1, hi = 0, mean = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = specula::rng::uniform(42, uint64_t(i), 0, specula::rng::kSample);
    lo = u < lo ? u : lo;
    hi = u > hi ? u : hi;
    mean += u / n;
  }
  CHECK(lo > 0 && hi < 1);
  CHECK_NEAR(mean, 0.5, 0, 4 * 0.2887 / 447.2);  // 4 standard errors
  // Domains give different streams for the same (seed, pos).
  CHECK(specula::rng::uniform(1, 5, 0, specula::rng::kAccept) != specula::rng::uniform(1, 5, 0, specula::rng::kEmit));
}

CHECK_MAIN()
