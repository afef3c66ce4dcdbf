/** Statistics and seeded randomness for the tests (independent of the code under test). */

/** mulberry32: a small seeded uint32 generator. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal variates (Box-Muller) from a seeded generator. */
export function normal(next: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(next() + 1e-300)) * Math.cos(2 * Math.PI * next());
}

function logGamma(x: number): number {
  // Lanczos approximation (g = 7, n = 9), |error| < 1e-13 for x > 0.
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
    -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  x -= 1;
  let a = c[0]!;
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i]! / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Regularized upper incomplete gamma Q(a, x) (Numerical Recipes gammq). */
export function gammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  if (x < a + 1) {
    let sum = 1 / a, term = sum, ap = a;
    for (let n = 0; n < 10000; n++) {
      ap += 1;
      term *= x / ap;
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-15) break;
    }
    return 1 - sum * Math.exp(-x + a * Math.log(x) - logGamma(a));
  }
  let b = x + 1 - a, c = 1 / 1e-300, d = 1 / b, h = d;
  for (let i = 1; i < 10000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (Math.abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-15) break;
  }
  return Math.exp(-x + a * Math.log(x) - logGamma(a)) * h;
}

export interface GoodnessOfFit {
  chi2: number;
  dof: number;
  pValue: number;
  tvd: number;
  /** Draws of tokens whose expected probability is exactly 0. */
  impossible: number;
}

/**
 * Pearson chi-square of observed counts against probabilities p (cells with expected
 * count < 5 pooled into one), and the total variation distance of the empirical
 * distribution from p.
 */
export function goodnessOfFit(counts: ArrayLike<number>, p: ArrayLike<number>): GoodnessOfFit {
  let n = 0;
  for (let i = 0; i < counts.length; i++) n += counts[i]!;
  let chi2 = 0, cells = 0, pooledObs = 0, pooledExp = 0, tvd = 0, impossible = 0;
  for (let i = 0; i < p.length; i++) {
    const e = p[i]! * n, o = counts[i]!;
    tvd += Math.abs(o / n - p[i]!) / 2;
    if (p[i] === 0) {
      impossible += o;
      continue;
    }
    if (e < 5) {
      pooledObs += o;
      pooledExp += e;
    } else {
      chi2 += ((o - e) * (o - e)) / e;
      cells++;
    }
  }
  if (pooledExp > 0) {
    if (pooledExp >= 1) {
      chi2 += ((pooledObs - pooledExp) ** 2) / pooledExp;
      cells++;
    } else if (pooledObs > 10) {
      // Fewer than one expected draw in the pooled tail, but more than ten observed.
      chi2 = Infinity;
    }
  }
  const dof = Math.max(1, cells - 1);
  return { chi2, dof, pValue: cells <= 1 && chi2 === 0 ? 1 : gammaQ(dof / 2, chi2 / 2), tvd, impossible };
}

/** Fills `out` with `pattern` repeated (memcpy speed). */
export function tile(out: Float32Array, pattern: ArrayLike<number>): Float32Array {
  out.set(pattern as ArrayLike<number>, 0);
  let filled = pattern.length;
  while (filled < out.length) {
    const n = Math.min(filled, out.length - filled);
    out.copyWithin(filled, 0, n);
    filled += n;
  }
  return out;
}
