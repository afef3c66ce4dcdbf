/**
 * Float64/integer reference of specula's randomness, written independently of the C++
 * (native/core/philox.h holds the one normative description):
 *   key     = (seed & 0xffffffff, seed >> 32)
 *   counter = (pos & 0xffffffff, pos >> 32, draw, domain)
 *   r       = philox4x32_10(counter, key)
 *   u       = (2 ((r0 >>> 6) 2^26 + (r1 >>> 6)) + 1) 2^-53        in (0, 1)
 */

export const Domain = { sample: 0, accept: 1, emit: 2 } as const;
export type DomainTag = (typeof Domain)[keyof typeof Domain];

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two uint32 (exact, through 16-bit halves). */
function mulhi(a: number, b: number): number {
  const ah = a >>> 16, al = a & 0xffff, bh = b >>> 16, bl = b & 0xffff;
  const mid = ah * bl + al * bh + Math.floor((al * bl) / 65536);
  return (ah * bh + Math.floor(mid / 65536)) >>> 0;
}

/** Philox4x32 with 10 rounds (Random123). */
export function philox4x32_10(ctr: readonly number[], key0: number, key1: number): [number, number, number, number] {
  let c0 = ctr[0]! >>> 0, c1 = ctr[1]! >>> 0, c2 = ctr[2]! >>> 0, c3 = ctr[3]! >>> 0;
  let k0 = key0 >>> 0, k1 = key1 >>> 0;
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    const n0 = (hi1 ^ c1 ^ k0) >>> 0, n2 = (hi0 ^ c3 ^ k1) >>> 0;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  return [c0, c1, c2, c3];
}

const MASK32 = 0xffffffffn;

/** The uniform in (0, 1) of (seed, pos, draw, domain). */
export function uniform(seed: bigint, pos: bigint, draw: number, domain: number): number {
  const r = philox4x32_10(
    [Number(pos & MASK32), Number((pos >> 32n) & MASK32), draw, domain],
    Number(seed & MASK32), Number((seed >> 32n) & MASK32),
  );
  const k = (r[0] >>> 6) * 2 ** 26 + (r[1] >>> 6);
  return (2 * k + 1) * 2 ** -53;
}
