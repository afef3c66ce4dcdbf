// Test 4 of the foundation issue: each row's outputs are bitwise identical alone,
// inside a batch of 64 (at any batch position), with 1 or 2 threads, sync or async,
// and on the AVX2 and AVX-512 kernels.
import { afterAll, describe, expect, it } from 'vitest';
import { getThreads, setThreads, verify, verifyAsync, sample, sampleAsync, probabilities, probabilitiesAsync,
  type SamplingParams, type VerifyOptions, type VerifyResult } from '../src/index.js';
import { native } from '../src/native.js';
import { normal, rng } from './helpers/stats.js';

const B = 64, G = 5, V = 3000;

function batch(): VerifyOptions & { target: SamplingParams[]; draft: SamplingParams[] } {
  const n = normal(rng(99));
  const targetLogits = Float32Array.from({ length: B * (G + 1) * V }, () => 3 * n());
  const draftLogits = new Float32Array(B * G * V);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < G * V; j++) draftLogits[b * G * V + j] = targetLogits[b * (G + 1) * V + j]! + 0.8 * n();
  }
  const target: SamplingParams[] = [], draft: SamplingParams[] = [];
  for (let b = 0; b < B; b++) {
    target.push([{ temperature: 1 }, { temperature: 0.6, topP: 0.9 }, { temperature: 0 }, { temperature: 1.4, topK: 40, minP: 0.01 }][b % 4]!);
    draft.push([{ temperature: 1 }, { temperature: 0.9 }, { temperature: 0.5, topK: 10 }, { temperature: 1.4 }][b % 4]!);
  }
  const draftTokens = Int32Array.from({ length: B * G }, (_, i) => (i * 7919) % V);
  const draftLengths = Int32Array.from({ length: B }, (_, b) => (b % 9 === 4 ? b % (G + 1) : G));
  const seeds = Array.from({ length: B }, (_, b) => BigInt(b) * 0x9e3779b97f4a7c15n % 2n ** 64n);
  const offsets = Array.from({ length: B }, (_, b) => b * 17);
  return { targetLogits, draftLogits, draftTokens, draftLengths, batch: B, gamma: G, vocab: V, target, draft, seeds, offsets };
}

/** The rows `rows` of a batch, in that order, as a new batch. */
function subset(o: ReturnType<typeof batch>, rows: number[]): VerifyOptions {
  const pick = <T extends Float32Array | Int32Array>(a: T, width: number): T => {
    const out = new (a.constructor as new (n: number) => T)(rows.length * width);
    rows.forEach((b, j) => out.set(a.subarray(b * width, (b + 1) * width), j * width));
    return out;
  };
  return {
    targetLogits: pick(o.targetLogits, (G + 1) * V), draftLogits: pick(o.draftLogits, G * V),
    draftTokens: pick(o.draftTokens, G), draftLengths: pick(o.draftLengths!, 1),
    batch: rows.length, gamma: G, vocab: V,
    target: rows.map((b) => o.target[b]!), draft: rows.map((b) => o.draft[b]!),
    seeds: rows.map((b) => o.seeds[b]!), offsets: rows.map((b) => o.offsets![b]!),
  };
}

/** Row b of a result as raw bits, so that NaN == NaN and -0 != 0. */
function rowBits(r: VerifyResult, b: number): number[] {
  const f = (a: Float32Array) => Array.from(new Uint32Array(a.slice(b * G, (b + 1) * G).buffer));
  return [...r.tokens.slice(b * (G + 1), (b + 1) * (G + 1)), r.accepted[b]!, r.emitted[b]!, ...f(r.acceptProbability), ...f(r.expectedAcceptance)];
}

const threadsBefore = getThreads();
const simdBefore = native().simd();
afterAll(() => {
  setThreads(threadsBefore);
  native().setSimd(simdBefore);
});

describe('batch, thread, backend and sync/async invariance', () => {
  const o = batch();

  it('verify: alone, in a batch of 64, shuffled, with 1 and 2 threads', async () => {
    setThreads(1);
    const one = verify(o);
    setThreads(2);
    const two = verify(o);
    const asyncTwo = await verifyAsync(o);
    const order = Array.from({ length: B }, (_, b) => (b * 37 + 11) % B);
    const shuffled = verify(subset(o, order));
    for (let b = 0; b < B; b++) {
      const want = rowBits(one, b);
      expect(rowBits(two, b)).toEqual(want);
      expect(rowBits(asyncTwo, b)).toEqual(want);
      expect(rowBits(shuffled, order.indexOf(b))).toEqual(want);
    }
    for (const b of [0, 5, 31, 63]) {
      setThreads(1);
      expect(rowBits(verify(subset(o, [b])), 0)).toEqual(rowBits(one, b));
      setThreads(2);
      expect(rowBits(await verifyAsync(subset(o, [b])), 0)).toEqual(rowBits(one, b));
    }
  });

  it('sample and probabilities: alone, in a batch, 1 and 2 threads, sync and async', async () => {
    const rows = B * G;
    const params = Array.from({ length: rows }, (_, r) => o.draft[r % B]!);
    const seeds = Array.from({ length: rows }, (_, r) => r * 1009);
    setThreads(1);
    const s1 = sample(o.draftLogits, { rows, vocab: V, params, seeds });
    const p1 = probabilities(o.draftLogits, { rows, vocab: V, params });
    setThreads(2);
    expect(sample(o.draftLogits, { rows, vocab: V, params, seeds })).toEqual(s1);
    expect(await sampleAsync(o.draftLogits, { rows, vocab: V, params, seeds })).toEqual(s1);
    const p2 = await probabilitiesAsync(o.draftLogits, { rows, vocab: V, params });
    expect(new Uint32Array(p2.buffer)).toEqual(new Uint32Array(p1.buffer));
    for (const r of [0, 77, rows - 1]) {
      const z = o.draftLogits.slice(r * V, (r + 1) * V);
      expect(sample(z, { rows: 1, vocab: V, params: params[r]!, seeds: [seeds[r]!] })[0]).toBe(s1[r]);
      const alone = probabilities(z, { rows: 1, vocab: V, params: params[r]! });
      expect(new Uint32Array(alone.buffer)).toEqual(new Uint32Array(p1.slice(r * V, (r + 1) * V).buffer));
    }
  });

  it('AVX2 and AVX-512 kernels give identical bits; the portable kernels the same tokens', () => {
    const b = native();
    const levels = (['avx512', 'avx2', 'portable'] as const).filter((l) => b.setSimd(l));
    const results = levels.map((l) => {
      b.setSimd(l);
      return { level: l, r: verify(o) };
    });
    b.setSimd(simdBefore);
    console.log(`kernel levels on this CPU: ${levels.join(', ')}`);
    const avx = results.filter((x) => x.level !== 'portable');
    for (let i = 1; i < avx.length; i++) {
      for (let row = 0; row < B; row++) expect(rowBits(avx[i]!.r, row)).toEqual(rowBits(avx[0]!.r, row));
    }
    const portable = results.find((x) => x.level === 'portable');
    if (portable && results[0]!.level !== 'portable') {
      expect(Array.from(portable.r.tokens)).toEqual(Array.from(results[0]!.r.tokens));
    }
  });
});
