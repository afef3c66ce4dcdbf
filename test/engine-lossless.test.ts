// Test 1 of the engine issue: speculative decoding is lossless end to end. Over 20,000
// seeds, the joint distribution of the first two generated tokens equals the target's
// autoregressive distribution, computed exactly here from the target's logits with the
// float64 reference sampler (chi-square p > 1e-6, no impossible pair drawn), for gamma 0
// (the baseline), 1 and 3, T in {0.6, 1, 1.5}, with and without top-p, with a draft
// temperature different from the target's, and with a close and an independent draft.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, SpeculativeDecoder, type Model } from '../src/index.js';
import { referenceDistribution } from '../src/reference/index.js';
import { goodnessOfFit } from './helpers/stats.js';
import { makePair, type Pair } from './helpers/pair.js';

const N = 20_000;
const PROMPT = [256, 72, 105]; // BOS "Hi"
const root = mkdtempSync(path.join(os.tmpdir(), 'specula-lossless-'));
let pair: Pair;
let target: Model;
let close: SpeculativeDecoder, independent: SpeculativeDecoder;
let V = 0, EOS = 0;
let z1: Float32Array;        // logits after the prompt
let z2: Float32Array;        // (V, V): logits after prompt + x1, row x1

beforeAll(async () => {
  pair = await makePair(root);
  target = await loadModel(pair.target);
  V = target.vocabSize;
  EOS = target.tokenizer.eosTokenIds[0]!;
  const full = await target.logits(PROMPT);
  z1 = full.slice((PROMPT.length - 1) * V);
  const cache = target.createCache({ sequences: V, capacity: PROMPT.length + 1 });
  z2 = await cache.forward(Array.from({ length: V }, (_, x) => ({ seq: x, tokens: [...PROMPT, x] })));
  cache.dispose();
  close = await SpeculativeDecoder.load({ target, draft: pair.close, maxBatch: 512 });
  independent = await SpeculativeDecoder.load({ target, draft: pair.independent, maxBatch: 512 });
}, 120_000);

afterAll(async () => {
  await close?.dispose();
  await independent?.dispose();
  target?.dispose();
  rmSync(root, { recursive: true, force: true });
});

/** Exact P(x1, x2) (cells x1 * V + x2) and P(x1 = EOS) (cell V * V). */
function exactJoint(params: { temperature: number; topP?: number }): Float64Array {
  const out = new Float64Array(V * V + 1);
  const p1 = referenceDistribution(z1, params).p;
  for (let x1 = 0; x1 < V; x1++) {
    if (p1[x1] === 0) continue;
    if (x1 === EOS) {
      out[V * V] = p1[x1]!;
      continue;
    }
    const p2 = referenceDistribution(z2.subarray(x1 * V, (x1 + 1) * V), params).p;
    for (let x2 = 0; x2 < V; x2++) out[x1 * V + x2] = p1[x1]! * p2[x2]!;
  }
  return out;
}

interface Case {
  name: string;
  T: number;
  gamma: number;
  topP?: number;
  draftT?: number;
  independent?: boolean;
}

const CASES: Case[] = [];
for (const T of [0.6, 1.0, 1.5]) {
  CASES.push({ name: `T ${T}, autoregressive (gamma 0)`, T, gamma: 0 });
  CASES.push({ name: `T ${T}, gamma 1`, T, gamma: 1 });
  CASES.push({ name: `T ${T}, gamma 3`, T, gamma: 3 });
  CASES.push({ name: `T ${T}, gamma 3, top-p 0.8`, T, gamma: 3, topP: 0.8 });
  CASES.push({ name: `T ${T}, gamma 1, draft T ${T * 1.5}`, T, gamma: 1, draftT: T * 1.5 });
  CASES.push({ name: `T ${T}, gamma 3, top-p 0.9, draft T ${T / 2}`, T, gamma: 3, topP: 0.9, draftT: T / 2 });
}
CASES.push({ name: 'T 1, gamma 3, independent draft', T: 1, gamma: 3, independent: true });

describe('the first two tokens follow the target distribution', () => {
  it.each(CASES)('$name', async (c) => {
    const dec = c.independent ? independent : close;
    const inputs = Array.from({ length: N }, () => ({ tokens: PROMPT }));
    const seeds = Array.from({ length: N }, (_, i) => BigInt(i) * 7919n + BigInt(c.gamma) * 1_000_003n + 17n);
    const results = await dec.generate(inputs, {
      maxNewTokens: 2, temperature: c.T, gamma: c.gamma, seed: seeds,
      ...(c.topP !== undefined ? { topP: c.topP } : {}),
      ...(c.draftT !== undefined ? { draft: { temperature: c.draftT } } : {}),
    });
    const counts = new Float64Array(V * V + 1);
    let accepted = 0, drafted = 0;
    for (const r of results) {
      const [x1, x2] = r.tokens;
      if (x1 === EOS) {
        expect(r.tokens.length).toBe(1);
        counts[V * V]! += 1;
      } else {
        expect(r.tokens.length).toBe(2);
        counts[x1! * V + x2!]! += 1;
      }
      accepted += r.stats.accepted;
      drafted += r.stats.drafted;
    }
    const fit = goodnessOfFit(counts, exactJoint({ temperature: c.T, ...(c.topP !== undefined ? { topP: c.topP } : {}) }));
    expect(fit.impossible).toBe(0);
    expect(fit.pValue).toBeGreaterThan(1e-6);
    if (c.gamma > 0 && !c.independent) {
      // The close draft is accepted often enough that both paths (accept, reject) are exercised.
      expect(accepted / drafted).toBeGreaterThan(0.1);
      expect(accepted / drafted).toBeLessThan(0.95);
    }
  });
});
