// The kernels' `device` option and backends(): the CPU path is the default's, 'cuda'
// without an available CUDA backend is an E_UNSUPPORTED error that says why, and bad
// values are rejected. (The CUDA kernels themselves are checked against the CPU by the
// C++ test test/native/test_cuda.cc on a machine with a GPU.)
import { describe, expect, it } from 'vitest';
import {
  SpeculaError, acceptanceRate, backends, kdLoss, kdLossAsync, probabilities, sample, sampleAsync, verify,
  type Device,
} from '../src/index.js';
import { normal, rng } from './helpers/stats.js';

const V = 300, R = 6;
const n = normal(rng(4));
const z = Float32Array.from({ length: R * V }, () => 2 * n());
const zs = Float32Array.from(z, (v) => v + 0.5 * n());
const params = { temperature: 0.9, topK: 50, topP: 0.9 };
const seeds = Array.from({ length: R }, (_, i) => 10 + i);

function run(device: Device | undefined) {
  const o = device === undefined ? {} : { device };
  return {
    sample: sample(z, { rows: R, vocab: V, params, seeds, ...o }),
    probabilities: probabilities(z, { rows: R, vocab: V, params, ...o }),
    verify: verify({
      targetLogits: z.subarray(0, 4 * V), draftLogits: zs.subarray(0, 3 * V), draftTokens: Int32Array.from([1, 2, 3]),
      batch: 1, gamma: 3, vocab: V, target: params, seeds: [7], ...o,
    }),
    kd: kdLoss(z, zs, { rows: R, vocab: V, divergence: 'jsd', temperature: 1.5, grad: true, ...o }),
    acceptance: acceptanceRate(z, zs, { rows: R, vocab: V, target: params, ...o }),
  };
}

describe('backends()', () => {
  it('reports the CPU and the CUDA backend of this build', () => {
    const b = backends();
    expect(b.cpu).toEqual({ built: true, available: true });
    expect(typeof b.cuda.built).toBe('boolean');
    if (b.cuda.available) {
      expect(b.cuda.built).toBe(true);
      expect(b.cuda.device).toMatch(/compute capability/);
    } else {
      expect(b.cuda.reason).toMatch(b.cuda.built ? /driver|device|cuda/i : /not built/);
      expect(b.cuda.device).toBeUndefined();
    }
  });
});

describe('device option', () => {
  it("'cpu' and 'auto' give the default's results (small inputs stay on the CPU)", () => {
    const base = run(undefined);
    for (const d of ['cpu', 'auto'] as const) {
      const r = run(d);
      expect(r.sample).toEqual(base.sample);
      expect(r.probabilities).toEqual(base.probabilities);
      expect(r.verify).toEqual(base.verify);
      expect(r.kd.loss).toBe(base.kd.loss);
      expect(r.kd.grad).toEqual(base.kd.grad);
      expect(r.acceptance).toEqual(base.acceptance);
    }
  });

  it("'cuda' without an available CUDA backend throws E_UNSUPPORTED with the reason", async () => {
    const b = backends();
    if (b.cuda.available) return;  // a GPU machine: nothing to refuse
    const calls: Array<() => unknown> = [
      () => sample(z, { rows: R, vocab: V, params, seeds, device: 'cuda' }),
      () => probabilities(z, { rows: R, vocab: V, params, device: 'cuda' }),
      () => kdLoss(z, zs, { rows: R, vocab: V, divergence: 'fkl', device: 'cuda' }),
      () => acceptanceRate(z, zs, { rows: R, vocab: V, target: params, device: 'cuda' }),
    ];
    for (const call of calls) {
      let err: unknown;
      try {
        call();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SpeculaError);
      expect((err as SpeculaError).code).toBe('E_UNSUPPORTED');
      expect((err as Error).message).toContain(b.cuda.reason!);
      expect((err as Error).message).toContain("received 'cuda'");
    }
    await expect(sampleAsync(z, { rows: R, vocab: V, params, seeds, device: 'cuda' })).rejects.toMatchObject({ code: 'E_UNSUPPORTED' });
    await expect(kdLossAsync(z, zs, { rows: R, vocab: V, divergence: 'tvd', device: 'cuda' })).rejects.toMatchObject({ code: 'E_UNSUPPORTED' });
  });

  it('rejects devices that do not exist', () => {
    expect(() => sample(z, { rows: R, vocab: V, params, seeds, device: 'gpu' as Device })).toThrow(
      expect.objectContaining({ code: 'E_VALUE', message: expect.stringContaining("'cpu', 'cuda' or 'auto'") }),
    );
    expect(() => kdLoss(z, zs, { rows: R, vocab: V, divergence: 'fkl', device: 1 as unknown as Device })).toThrow(
      expect.objectContaining({ code: 'E_ARG' }),
    );
  });
});
