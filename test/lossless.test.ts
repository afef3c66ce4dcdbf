// Test 2 of the foundation issue: speculative verification is lossless. For many
// (p, q) pairs, temperatures, draft parameters and filters, the first emitted token of
// sample-then-verify follows the target distribution p (chi-square p-value > 1e-6 and
// TVD < 3 sqrt(V/N) over N = 200,000 independent draws), and the acceptance rate at
// position 0 matches sum_x min(p, q) within 4 standard errors.
import { describe, expect, it } from 'vitest';
import { sample, verify, type SamplingParams } from '../src/index.js';
import { referenceDistribution } from '../src/reference/index.js';
import { goodnessOfFit, normal, rng, tile } from './helpers/stats.js';

const N = 200_000;

type Shape = 'random' | 'peaked' | 'flat' | 'near' | 'disjoint' | 'two';
const SHAPES: { shape: Shape; V: number }[] = [
  { shape: 'random', V: 64 },
  { shape: 'peaked', V: 16 },
  { shape: 'flat', V: 48 },
  { shape: 'near', V: 32 },
  { shape: 'disjoint', V: 8 },
  { shape: 'two', V: 2 },
];
const TEMPERATURES = [0, 0.3, 0.7, 1, 1.5, 2];
// Filter sets for the variants with filters: [target, draft].
const FILTERS: [Partial<SamplingParams>, Partial<SamplingParams>][] = [
  [{ topK: 5 }, { topP: 0.8 }],
  [{ topP: 0.7 }, {}],
  [{ minP: 0.1 }, { topK: 3, minP: 0.05 }],
  [{ topK: 6, topP: 0.9, minP: 0.05 }, { topK: 4 }],
];

function logits(shape: Shape, V: number, seed: number): [Float32Array, Float32Array] {
  const n = normal(rng(seed));
  const p = new Float32Array(V), q = new Float32Array(V);
  for (let x = 0; x < V; x++) {
    switch (shape) {
      case 'random': p[x] = 2 * n(); q[x] = 2 * n(); break;
      case 'peaked': p[x] = n() + (x === 3 ? 6 : 0); q[x] = n() + (x === 5 ? 5 : 0); break;
      case 'flat': p[x] = 0.1 * n(); q[x] = 0.1 * n(); break;
      case 'near': p[x] = 1.5 * n(); q[x] = p[x]! + 0.05 * n(); break;
      // Disjoint supports (as far as finite logits go): p on the first half, q on the second.
      case 'disjoint': p[x] = x < V / 2 ? n() : -60; q[x] = x < V / 2 ? -60 : n(); break;
      case 'two': p[x] = x === 0 ? 1.2 : 0; q[x] = x === 0 ? -0.4 : 0; break;
    }
  }
  return [p, q];
}

// Reused buffers: [N, 2, V] target logits (position 0 and the bonus position), [N, 1, V] draft.
const maxV = Math.max(...SHAPES.map((s) => s.V));
const targetBuf = new Float32Array(N * 2 * maxV);
const draftBuf = new Float32Array(N * maxV);

function run(shape: Shape, V: number, tp: SamplingParams, dp: SamplingParams, seed: number) {
  const [p, q] = logits(shape, V, seed);
  const targetRow = new Float32Array(2 * V);
  targetRow.set(p, 0);
  targetRow.set(p, V);
  const targetLogits = tile(targetBuf.subarray(0, N * 2 * V), targetRow);
  const draftLogits = tile(draftBuf.subarray(0, N * V), q);
  const seeds = new BigUint64Array(N);
  for (let r = 0; r < N; r++) seeds[r] = BigInt(seed) * 4_000_037n + BigInt(r);
  // The draft samples x_0 ~ q (stream "sample"), the target verifies it.
  const draftTokens = sample(draftLogits, { rows: N, vocab: V, params: dp, seeds });
  const r = verify({ targetLogits, draftLogits, draftTokens, batch: N, gamma: 1, vocab: V, target: tp, draft: dp, seeds });
  const counts = new Float64Array(V);
  let accepted = 0;
  for (let b = 0; b < N; b++) {
    counts[r.tokens[2 * b]!]!++;
    accepted += r.accepted[b]!;
  }
  const P = referenceDistribution(p, tp).p, Q = referenceDistribution(q, dp).p;
  let overlap = 0;
  for (let x = 0; x < V; x++) overlap += Math.min(P[x]!, Q[x]!);
  return { fit: goodnessOfFit(counts, P), acceptance: accepted / N, overlap };
}

interface Config { shape: Shape; V: number; tp: SamplingParams; dp: SamplingParams; label: string }
const CONFIGS: Config[] = [];
for (const { shape, V } of SHAPES) {
  TEMPERATURES.forEach((T, ti) => {
    // Same parameters for draft and target.
    CONFIGS.push({ shape, V, tp: { temperature: T }, dp: { temperature: T }, label: 'same params' });
    // A different draft temperature, with filters on both sides.
    const [tf, df] = FILTERS[ti % FILTERS.length]!;
    const dT = T === 0 ? 0.8 : T === 2 ? 1.2 : T + 0.5;
    CONFIGS.push({ shape, V, tp: { temperature: T, ...tf }, dp: { temperature: dT, ...df }, label: 'draft differs, filters' });
  });
  // The draft temperature differs without filters, and a greedy draft.
  CONFIGS.push({ shape, V, tp: { temperature: 1 }, dp: { temperature: 0.5 }, label: 'draft T 0.5' });
  CONFIGS.push({ shape, V, tp: { temperature: 0.7 }, dp: { temperature: 0 }, label: 'greedy draft' });
}

describe('verification is lossless', () => {
  it(`first emitted token ~ p and acceptance = sum min(p, q), ${CONFIGS.length} configurations x ${N} draws`, () => {
    const failures: string[] = [];
    let worstP = 1, worstZ = 0;
    CONFIGS.forEach((c, i) => {
      const { fit, acceptance, overlap } = run(c.shape, c.V, c.tp, c.dp, 1000 + i);
      const se = Math.sqrt((overlap * (1 - overlap)) / N);
      const z = se > 0 ? Math.abs(acceptance - overlap) / se : acceptance === overlap ? 0 : Infinity;
      worstP = Math.min(worstP, fit.pValue);
      if (Math.abs(acceptance - overlap) > 1e-9) worstZ = Math.max(worstZ, z);
      const where = `${c.shape} V=${c.V} ${c.label} target=${JSON.stringify(c.tp)} draft=${JSON.stringify(c.dp)}`;
      if (fit.impossible > 0) failures.push(`${where}: ${fit.impossible} draws of probability-0 tokens`);
      if (!(fit.pValue > 1e-6)) failures.push(`${where}: chi2 ${fit.chi2.toFixed(1)} (dof ${fit.dof}) p=${fit.pValue.toExponential(2)}`);
      if (!(fit.tvd < 3 * Math.sqrt(c.V / N))) failures.push(`${where}: TVD ${fit.tvd.toFixed(4)}`);
      if (!(Math.abs(acceptance - overlap) <= 4 * se + 1e-9)) {
        failures.push(`${where}: acceptance ${acceptance.toFixed(5)} vs sum min(p,q) ${overlap.toFixed(5)} (${z.toFixed(1)} SE)`);
      }
    });
    console.log(`lossless: ${CONFIGS.length} configurations, smallest chi-square p-value ${worstP.toExponential(2)}, ` +
      `largest acceptance deviation ${worstZ.toFixed(2)} SE`);
    expect(failures).toEqual([]);
  });
});
