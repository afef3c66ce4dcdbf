// The test statistics themselves, against known values, so that a broken helper cannot
// make the statistical tests vacuous.
import { describe, expect, it } from 'vitest';
import { gammaQ, goodnessOfFit, rng } from './helpers/stats.js';

describe('test statistics', () => {
  it('chi-square upper tail matches tabulated quantiles', () => {
    // P(chi2_k > x) for (k, x) from standard tables.
    expect(gammaQ(1 / 2, 3.841 / 2)).toBeCloseTo(0.05, 3);
    expect(gammaQ(10 / 2, 23.209 / 2)).toBeCloseTo(0.01, 3);
    expect(gammaQ(63 / 2, 82.529 / 2)).toBeCloseTo(0.05, 3);
    expect(gammaQ(5 / 2, 0.554 / 2)).toBeCloseTo(0.99, 3);
  });

  it('rejects a wrong distribution and accepts the right one', () => {
    const p = [0.5, 0.3, 0.2];
    const next = rng(1);
    const counts = [0, 0, 0];
    for (let i = 0; i < 100000; i++) {
      const u = next();
      counts[u < 0.5 ? 0 : u < 0.8 ? 1 : 2]!++;
    }
    expect(goodnessOfFit(counts, p).pValue).toBeGreaterThan(1e-3);
    expect(goodnessOfFit(counts, [0.49, 0.31, 0.2]).pValue).toBeLessThan(1e-6);
    expect(goodnessOfFit([10, 0, 0, 5], [0.5, 0.5, 0, 0]).impossible).toBe(5);
  });
});
