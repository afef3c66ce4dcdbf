// Test 5 of the foundation issue: bad input throws SpeculaError with a fitting code and
// a message naming the argument, what was expected and what was received; the process
// survives; and no out-of-range token is ever returned, whatever finite logits come in.
import { describe, expect, it } from 'vitest';
import { SpeculaError, probabilities, probabilitiesAsync, sample, sampleAsync, verify, verifyAsync,
  type VerifyOptions } from '../src/index.js';
import { normal, rng } from './helpers/stats.js';

function expectError(fn: () => unknown, code: string, ...parts: string[]): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(SpeculaError);
  const e = caught as SpeculaError;
  expect(e.code, e.message).toBe(code);
  for (const p of parts) expect(e.message).toContain(p);
}

const B = 2, G = 3, V = 10;
function valid(): VerifyOptions {
  return {
    targetLogits: new Float32Array(B * (G + 1) * V).fill(0.5),
    draftLogits: new Float32Array(B * G * V).fill(0.25),
    draftTokens: new Int32Array(B * G).fill(1),
    batch: B, gamma: G, vocab: V,
    target: { temperature: 1 },
    seeds: [1, 2],
  };
}

describe('bad input -> SpeculaError', () => {
  it('non-finite logits, wherever they are', async () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const o = valid();
      o.targetLogits[1 * (G + 1) * V + 2 * V + 7] = bad;
      expectError(() => verify(o), 'E_VALUE', 'targetLogits[', 'batch 1, position 2, token 7', `received ${bad}`);
      const d = valid();
      d.draftLogits[5] = bad;
      expectError(() => verify(d), 'E_VALUE', 'draftLogits[5]', 'batch 0, position 0, token 5');
      const z = new Float32Array(3 * V);
      z[2 * V + 9] = bad;
      expectError(() => sample(z, { rows: 3, vocab: V, params: { temperature: 0.5 }, seeds: [1, 2, 3] }), 'E_VALUE', 'logits[29]', 'row 2, token 9');
      expectError(() => probabilities(z, { rows: 3, vocab: V, params: { temperature: 0 } }), 'E_VALUE', 'logits[29]');
      await expect(probabilitiesAsync(z, { rows: 3, vocab: V, params: { temperature: 1 } })).rejects.toMatchObject({ code: 'E_VALUE' });
    }
    // The bonus row is checked even when no bonus token is needed (deterministic errors).
    const o = valid();
    o.draftLengths = new Int32Array([1, 1]);
    o.targetLogits[1 * V + 3] = NaN;
    expectError(() => verify(o), 'E_VALUE', 'batch 0, position 1, token 3');
  });

  it('wrong array types and lengths', () => {
    const o = valid();
    expectError(() => verify({ ...o, targetLogits: new Float32Array(5) }), 'E_SHAPE', 'targetLogits', '[batch, gamma + 1, vocab] = 80', 'length 5');
    expectError(() => verify({ ...o, draftLogits: new Float32Array(61) }), 'E_SHAPE', 'draftLogits', '60');
    expectError(() => verify({ ...o, draftTokens: new Int32Array(5) }), 'E_SHAPE', 'draftTokens');
    expectError(() => verify({ ...o, draftLengths: new Int32Array(3) }), 'E_SHAPE', 'draftLengths');
    expectError(() => verify({ ...o, targetLogits: new Float64Array(80) as unknown as Float32Array }), 'E_ARG', 'targetLogits', 'Float64Array');
    expectError(() => verify({ ...o, draftTokens: [1, 1, 1, 1, 1, 1] as unknown as Int32Array }), 'E_ARG', 'draftTokens', 'an Array');
    expectError(() => sample(new Float32Array(7), { rows: 1, vocab: V, params: { temperature: 1 }, seeds: [1] }), 'E_SHAPE', 'logits');
    expectError(() => probabilities(null as unknown as Float32Array, { rows: 1, vocab: V, params: { temperature: 1 } }), 'E_ARG', 'logits', 'null');
    expectError(() => verify(undefined as unknown as VerifyOptions), 'E_ARG', 'options');
  });

  it('dimensions: gamma < 0, fractional or missing sizes, vocab 0', () => {
    const o = valid();
    expectError(() => verify({ ...o, gamma: -1 }), 'E_VALUE', 'gamma', 'received -1');
    expectError(() => verify({ ...o, gamma: 1.5 }), 'E_VALUE', 'gamma', '1.5');
    expectError(() => verify({ ...o, batch: '2' as unknown as number }), 'E_ARG', 'batch', '"2"');
    expectError(() => sample(new Float32Array(0), { rows: 0, vocab: 0, params: { temperature: 1 }, seeds: [] }), 'E_VALUE', 'vocab');
  });

  it('draft lengths and draft token ids out of range', () => {
    const o = valid();
    expectError(() => verify({ ...o, draftLengths: new Int32Array([3, 4]) }), 'E_VALUE', 'draftLengths[1]', 'gamma = 3', 'received 4');
    expectError(() => verify({ ...o, draftLengths: new Int32Array([-1, 0]) }), 'E_VALUE', 'draftLengths[0]');
    const t = valid();
    t.draftTokens[4] = V;
    expectError(() => verify(t), 'E_VALUE', 'draftTokens[4]', 'batch 1, position 1', 'vocab = 10', 'received 10');
    t.draftTokens[4] = -3;
    expectError(() => verify(t), 'E_VALUE', 'draftTokens[4]', 'received -3');
    // A bad id past the row's draft length is padding and ignored.
    t.draftLengths = new Int32Array([3, 1]);
    expect(verify(t).accepted[1]).toBeLessThanOrEqual(1);
  });

  it('sampling parameters out of range', () => {
    const o = valid();
    const cases: [object, string, string][] = [
      [{ temperature: -0.1 }, 'target.temperature', '-0.1'],
      [{ temperature: NaN }, 'target.temperature', 'NaN'],
      [{ temperature: Infinity }, 'target.temperature', 'Infinity'],
      [{ temperature: 1, topK: 0 }, 'target.topK', 'received 0'],
      [{ temperature: 1, topK: 2.5 }, 'target.topK', '2.5'],
      [{ temperature: 1, topP: 0 }, 'target.topP', '(0, 1]'],
      [{ temperature: 1, topP: 1.01 }, 'target.topP', '1.01'],
      [{ temperature: 1, minP: 1 }, 'target.minP', '[0, 1)'],
      [{ temperature: 1, minP: -0.5 }, 'target.minP', '-0.5'],
    ];
    for (const [params, name, received] of cases) {
      expectError(() => verify({ ...o, target: params as never }), 'E_VALUE', name, received);
    }
    expectError(() => verify({ ...o, target: { temperature: '1' } as never }), 'E_ARG', 'target.temperature');
    expectError(() => verify({ ...o, target: { temperature: 1, top_p: 0.9 } as never }), 'E_ARG', 'target.top_p', 'unknown option');
    expectError(() => verify({ ...o, draft: [{ temperature: 1 }, { temperature: 1, topK: -1 }] }), 'E_VALUE', 'draft[1].topK');
    expectError(() => verify({ ...o, target: [{ temperature: 1 }] }), 'E_SHAPE', 'target', 'an Array of 2');
  });

  it('seeds and offsets', () => {
    const o = valid();
    expectError(() => verify({ ...o, seeds: [1] }), 'E_SHAPE', 'seeds', '2 seeds');
    expectError(() => verify({ ...o, seeds: [1, 2, 3] }), 'E_SHAPE', 'seeds');
    expectError(() => verify({ ...o, seeds: [1, -2] }), 'E_VALUE', 'seeds[1]', '-2');
    expectError(() => verify({ ...o, seeds: [1, 2n ** 64n] }), 'E_VALUE', 'seeds[1]');
    expectError(() => verify({ ...o, seeds: [1, 0.5] }), 'E_VALUE', 'seeds[1]');
    expectError(() => verify({ ...o, seeds: [1, '2'] as never }), 'E_ARG', 'seeds[1]');
    expectError(() => verify({ ...o, seeds: undefined as never }), 'E_ARG', 'seeds');
    expectError(() => verify({ ...o, offsets: [0, -1] }), 'E_VALUE', 'offsets[1]');
    expectError(() => verify({ ...o, offsets: [0] }), 'E_SHAPE', 'offsets');
    expect(verify({ ...o, seeds: [2n ** 64n - 1n, 0], offsets: [2 ** 53 - 1, 0] }).emitted[0]).toBeGreaterThan(0);
  });

  it('async failures reject with SpeculaError and keep the caller\'s stack', async () => {
    const o = valid();
    o.draftLogits[0] = NaN;
    const err = await verifyAsync(o).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpeculaError);
    expect((err as SpeculaError).code).toBe('E_VALUE');
    expect((err as Error).stack).toContain('errors.test.ts');
    await expect(sampleAsync(new Float32Array(3), { rows: 1, vocab: 3, params: { temperature: 1 }, seeds: [1, 2] }))
      .rejects.toMatchObject({ code: 'E_SHAPE' });
  });

  it('never returns an out-of-range token, whatever finite logits come in', () => {
    const next = rng(5), n = normal(next);
    const extremes = [0, -0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1e30, -1e30, 88, -88];
    for (let trial = 0; trial < 300; trial++) {
      const Vt = 1 + Math.floor(next() * 40), Gt = Math.floor(next() * 4), Bt = 1 + Math.floor(next() * 4);
      const fill = (len: number) => Float32Array.from({ length: len }, () =>
        next() < 0.3 ? extremes[Math.floor(next() * extremes.length)]! : n() * 10 ** Math.floor(next() * 6));
      const T = [0, 1e-30, 1e-6, 0.5, 1, 100, 1e30][trial % 7]!;
      const params = { temperature: T, ...(trial % 3 === 0 ? { topK: 1 + (trial % 5), topP: 0.3 + 0.1 * (trial % 7), minP: 0.01 * (trial % 50) } : {}) };
      const r = verify({
        targetLogits: fill(Bt * (Gt + 1) * Vt), draftLogits: fill(Bt * Gt * Vt),
        draftTokens: Int32Array.from({ length: Bt * Gt }, () => Math.floor(next() * Vt)),
        batch: Bt, gamma: Gt, vocab: Vt, target: params, draft: { temperature: [1, 0, 1e-20][trial % 3]! },
        seeds: Array.from({ length: Bt }, () => Math.floor(next() * 1e9)),
      });
      for (let b = 0; b < Bt; b++) {
        expect(r.emitted[b]).toBe(r.accepted[b]! + 1);
        for (let i = 0; i < r.emitted[b]!; i++) {
          const t = r.tokens[b * (Gt + 1) + i]!;
          expect(t >= 0 && t < Vt, `trial ${trial}: token ${t}`).toBe(true);
        }
      }
      const s = sample(fill(Bt * Vt), { rows: Bt, vocab: Vt, params, seeds: Array.from({ length: Bt }, (_, b) => b) });
      for (const t of s) expect(t >= 0 && t < Vt).toBe(true);
    }
  });
});
