// Test 3 of the foundation issue: a toy table "model" whose position-1 logits depend on
// the position-0 token. Running the speculative loop (draft 2 tokens, verify, and when
// only one token came out, draft and verify again from it) gives pairs of first two
// tokens whose joint distribution is the target's: p(t0) p(t1 | t0).
import { describe, expect, it } from 'vitest';
import { sample, verify, type SamplingParams } from '../src/index.js';
import { referenceDistribution } from '../src/reference/index.js';
import { goodnessOfFit, normal, rng } from './helpers/stats.js';

const V = 6;
const N = 200_000;

/** Logit tables: pos0[x], pos1[x0][x], pos2[x0][x1][x] for the target or the draft. */
function tables(seed: number, scale: number) {
  const n = normal(rng(seed));
  const row = () => Float32Array.from({ length: V }, () => scale * n());
  return {
    pos0: row(),
    pos1: Array.from({ length: V }, row),
    pos2: Array.from({ length: V }, () => Array.from({ length: V }, row)),
  };
}

function joint(tp: SamplingParams, dp: SamplingParams, seedBase: bigint) {
  const T = tables(11, 1.5);
  const D = tables(12, 1.5);
  // The draft resembles the target: mix its tables in.
  const mix = (d: Float32Array, t: Float32Array) => d.forEach((v, i) => { d[i] = 0.5 * v + t[i]!; });
  mix(D.pos0, T.pos0);
  for (let a = 0; a < V; a++) {
    mix(D.pos1[a]!, T.pos1[a]!);
    for (let b = 0; b < V; b++) mix(D.pos2[a]![b]!, T.pos2[a]![b]!);
  }
  const seeds = new BigUint64Array(N).map((_, r) => seedBase + BigInt(r));

  // Step 1 (position 0, gamma 2): x0 ~ q0, x1 ~ q1(.|x0), then verify.
  const d0 = new Float32Array(N * V);
  for (let r = 0; r < N; r++) d0.set(D.pos0, r * V);
  const x0 = sample(d0, { rows: N, vocab: V, params: dp, seeds, offsets: new Array(N).fill(0) });
  const d1 = new Float32Array(N * V);
  for (let r = 0; r < N; r++) d1.set(D.pos1[x0[r]!]!, r * V);
  const x1 = sample(d1, { rows: N, vocab: V, params: dp, seeds, offsets: new Array(N).fill(1) });
  const targetLogits = new Float32Array(N * 3 * V), draftLogits = new Float32Array(N * 2 * V);
  const draftTokens = new Int32Array(N * 2);
  for (let r = 0; r < N; r++) {
    targetLogits.set(T.pos0, (3 * r) * V);
    targetLogits.set(T.pos1[x0[r]!]!, (3 * r + 1) * V);
    targetLogits.set(T.pos2[x0[r]!]![x1[r]!]!, (3 * r + 2) * V);
    draftLogits.set(D.pos0, (2 * r) * V);
    draftLogits.set(D.pos1[x0[r]!]!, (2 * r + 1) * V);
    draftTokens[2 * r] = x0[r]!;
    draftTokens[2 * r + 1] = x1[r]!;
  }
  const s1 = verify({ targetLogits, draftLogits, draftTokens, batch: N, gamma: 2, vocab: V, target: tp, draft: dp, seeds });

  // Step 2 for the sequences that emitted a single token t0: from position 1, gamma 1.
  const again: number[] = [];
  for (let r = 0; r < N; r++) if (s1.emitted[r] === 1) again.push(r);
  const M = again.length;
  const seeds2 = BigUint64Array.from(again, (r) => seeds[r]!);
  const q1 = new Float32Array(M * V);
  again.forEach((r, j) => q1.set(D.pos1[s1.tokens[3 * r]!]!, j * V));
  const y1 = sample(q1, { rows: M, vocab: V, params: dp, seeds: seeds2, offsets: new Array(M).fill(1) });
  const t2 = new Float32Array(M * 2 * V);
  again.forEach((r, j) => {
    const t0 = s1.tokens[3 * r]!;
    t2.set(T.pos1[t0]!, (2 * j) * V);
    t2.set(T.pos2[t0]![y1[j]!]!, (2 * j + 1) * V);
  });
  const s2 = verify({
    targetLogits: t2, draftLogits: q1, draftTokens: Int32Array.from(y1), batch: M, gamma: 1, vocab: V,
    target: tp, draft: dp, seeds: seeds2, offsets: new Array(M).fill(1),
  });

  const counts = new Float64Array(V * V);
  let k = 0;
  for (let r = 0; r < N; r++) {
    const t0 = s1.tokens[3 * r]!;
    const t1 = s1.emitted[r]! >= 2 ? s1.tokens[3 * r + 1]! : s2.tokens[2 * k++]!;
    counts[t0 * V + t1]!++;
  }
  const p0 = referenceDistribution(T.pos0, tp).p;
  const expected = new Float64Array(V * V);
  for (let a = 0; a < V; a++) {
    const p1 = referenceDistribution(T.pos1[a]!, tp).p;
    for (let b = 0; b < V; b++) expected[a * V + b] = p0[a]! * p1[b]!;
  }
  return { fit: goodnessOfFit(counts, expected), secondStep: M / N };
}

describe('the joint distribution of two emitted tokens is the target\'s', () => {
  const cases: [string, SamplingParams, SamplingParams][] = [
    ['T 1, same draft', { temperature: 1 }, { temperature: 1 }],
    ['T 0.7, draft T 1.3 with top-k', { temperature: 0.7 }, { temperature: 1.3, topK: 4 }],
    ['T 1.5 top-p 0.9, draft T 1', { temperature: 1.5, topP: 0.9 }, { temperature: 1 }],
  ];
  cases.forEach(([label, tp, dp], i) => {
    it(label, () => {
      const { fit, secondStep } = joint(tp, dp, BigInt(i + 1) * 10_000_000n);
      console.log(`joint ${label}: chi2 ${fit.chi2.toFixed(1)} (dof ${fit.dof}), p=${fit.pValue.toFixed(4)}, ` +
        `TVD ${fit.tvd.toFixed(4)}, ${(100 * secondStep).toFixed(1)}% needed a second step`);
      expect(fit.impossible).toBe(0);
      expect(fit.pValue).toBeGreaterThan(1e-6);
      expect(fit.tvd).toBeLessThan(3 * Math.sqrt((V * V) / N));
      expect(secondStep).toBeGreaterThan(0.05); // both paths are exercised
    });
  });
});
