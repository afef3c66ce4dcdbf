// The native KD kernels (kdLoss, acceptanceRate) against the float64 reference, their
// properties, the link between expected and realised acceptance, batch/thread
// invariance, and errors. Tests 1, 3, 4, 5 of the KD issue; test 2 (the reference's
// gradients vs finite differences) is in kd-reference.test.ts.
import { afterAll, describe, expect, it } from 'vitest';
import {
  SpeculaError, acceptanceRate, acceptanceRateAsync, getThreads, kdLoss, kdLossAsync, sample, setThreads, verify,
  type Divergence, type SamplingParams,
} from '../src/index.js';
import { native } from '../src/native.js';
import { referenceAcceptanceRate, referenceKdLoss } from '../src/reference/index.js';
import { normal, rng, tile } from './helpers/stats.js';

const DIVERGENCES: Divergence[] = ['fkl', 'rkl', 'jsd', 'tvd'];
const TEMPERATURES = [0.25, 0.5, 1, 2, 4];

/** Rows of teacher/student logits: near copies, noisy copies and independent rows. */
function pairs(rows: number, V: number, seed: number) {
  const n = normal(rng(seed));
  const teacher = new Float32Array(rows * V), student = new Float32Array(rows * V);
  for (let r = 0; r < rows; r++) {
    const scale = [1, 3][r % 2]!;
    const kind = r % 3; // 0 near, 1 noisy, 2 independent
    for (let x = 0; x < V; x++) {
      const t = scale * n();
      teacher[r * V + x] = t;
      student[r * V + x] = kind === 0 ? t + 0.1 * n() : kind === 1 ? t + n() : scale * n();
    }
  }
  return { teacher, student };
}

const threadsBefore = getThreads();
afterAll(() => setThreads(threadsBefore));

/**
 * Expects every row's divergence within 1e-5 relative (+ `floor` absolute) of the
 * reference and every gradient entry above 1e-6 within 1e-4 relative; returns the worst
 * relative errors (losses above `reportAbove`) and how many gradient entries were checked.
 */
function expectMatches(
  got: { perRow: Float32Array; grad?: Float32Array }, want: { perRow: Float64Array; grad?: Float64Array },
  entries: number, floor: number, reportAbove: number, where: (row: number) => string,
) {
  const V = entries / got.perRow.length;
  let loss = 0, grad = 0, checked = 0;
  for (let r = 0; r < got.perRow.length; r++) {
    const err = Math.abs(got.perRow[r]! - want.perRow[r]!);
    if (want.perRow[r]! > reportAbove) loss = Math.max(loss, err / want.perRow[r]!);
    expect(err, `${where(r)}: ${got.perRow[r]} vs ${want.perRow[r]}`).toBeLessThanOrEqual(1e-5 * want.perRow[r]! + floor);
  }
  for (let i = 0; i < entries; i++) {
    const w = want.grad![i]!;
    if (Math.abs(w) <= 1e-6) continue;
    const e = Math.abs(got.grad![i]! - w) / Math.abs(w);
    grad = Math.max(grad, e);
    checked++;
    if (e > 1e-4) expect(e, `${where(Math.floor(i / V))} entry ${i}: ${got.grad![i]} vs ${w}`).toBeLessThanOrEqual(1e-4);
  }
  return { loss, grad, checked };
}

describe('kdLoss equals the float64 reference', () => {
  it('losses within 1e-5 and gradient entries > 1e-6 within 1e-4, V up to 50,000', () => {
    let worstLoss = 0, worstGrad = 0, checked = 0;
    for (const V of [2, 37, 1000, 50000]) {
      const rows = V === 50000 ? 6 : 9;
      const { teacher, student } = pairs(rows, V, V);
      for (const divergence of DIVERGENCES) {
        for (const temperature of TEMPERATURES) {
          for (const beta of divergence === 'jsd' ? [0.1, 0.5, 0.9] : [0.5]) {
            const opts = { rows, vocab: V, divergence, temperature, beta, grad: true };
            const got = kdLoss(teacher, student, opts);
            const want = referenceKdLoss(teacher, student, opts);
            const where = `${divergence} V=${V} T=${temperature} beta=${beta}`;
            expect(Math.abs(got.loss - want.loss), where).toBeLessThanOrEqual(1e-5 * want.loss);
            // The absolute floor 1e-13 only matters for divergences below ~1e-8
            // (near-identical rows: the next test holds those to 1e-15).
            const w = expectMatches(got, want, rows * V, 1e-13, 1e-8, (r) => `${where} row ${r}`);
            worstLoss = Math.max(worstLoss, w.loss);
            worstGrad = Math.max(worstGrad, w.grad);
            checked += w.checked;
          }
        }
      }
    }
    console.log(`kdLoss vs reference: worst relative error ${worstLoss.toExponential(2)} on losses, ` +
      `${worstGrad.toExponential(2)} on ${checked} gradient entries > 1e-6`);
  });

  it('near-identical rows (tiny noise, large offsets, peaked and flat) keep 1e-5 / 1e-4', () => {
    // Where the student is the teacher plus noise of 3e-4 .. 1e-2 (and an offset of 0 or
    // 35), divergences fall to 1e-16 .. 1e-5 and come from sums that cancel: every
    // rounding of r = log q - log p, of delta (the measured normalisation) and of the
    // side of r = 0 on which a near-certain token falls shows. The reference resolves
    // these to ~1e-16 absolute, hence the floor.
    let worstLoss = 0, worstGrad = 0;
    for (const V of [1000, 32000]) {
      const n = normal(rng(V + 5));
      const cases: [number, number, number][] = [];
      for (const scale of [1, 10]) for (const noise of [3e-4, 1e-2]) for (const offset of [0, 35]) cases.push([scale, noise, offset]);
      const rows = cases.length;
      const teacher = new Float32Array(rows * V), student = new Float32Array(rows * V);
      cases.forEach(([scale, noise, offset], r) => {
        for (let x = 0; x < V; x++) {
          teacher[r * V + x] = scale * n();
          student[r * V + x] = teacher[r * V + x]! + noise * n() + offset;
        }
      });
      for (const divergence of DIVERGENCES) {
        for (const temperature of [0.25, 1, 4]) {
          const opts = { rows, vocab: V, divergence, temperature, grad: true };
          const got = kdLoss(teacher, student, opts);
          const want = referenceKdLoss(teacher, student, opts);
          const w = expectMatches(got, want, rows * V, 1e-15, 1e-10,
            (r) => `${divergence} V=${V} T=${temperature} (scale, noise, offset) = (${cases[r]})`);
          worstLoss = Math.max(worstLoss, w.loss);
          worstGrad = Math.max(worstGrad, w.grad);
        }
      }
    }
    console.log(`near-identical rows: worst relative error ${worstLoss.toExponential(2)} on losses > 1e-10, ` +
      `${worstGrad.toExponential(2)} on gradient entries > 1e-6`);
  });

  it('fkl and rkl in one sweep: late maxima far above the early ones, heavy first chunks, offsets', () => {
    // fkl and rkl take both rows in one sweep of 2048-token chunks, each relative to the
    // maxima so far (a chunk whose maximum is more than 20/T above them is redone), with
    // the tokens that may carry mass in double; r's constant is estimated from the chunks
    // before. These rows make each of those matter.
    const V = 20000, rows = 6;
    const n = normal(rng(77));
    const teacher = new Float32Array(rows * V), student = new Float32Array(rows * V);
    for (let r = 0; r < rows; r++) {
      for (let x = 0; x < V; x++) {
        let t = n(), s = t + 0.7 * n();
        if (r === 0 && x === 15000) t += 40; // the teacher's maximum in a late chunk
        if (r === 1 && x === 9000) s += 40; // the student's
        if (r === 2) {
          if (x === 6000) t += 25;
          if (x === 19999) s += 30; // both, in different chunks (the last one partial)
        }
        if (r === 3 && x < 2048) {
          t = 6 + 0.1 * n(); // a first chunk full of heavy tokens
          s = t + 0.3 * n();
        }
        if (r === 4) {
          t += x / 500; // the maxima rise in every chunk
          s = t + 0.5 * n();
        }
        if (r === 5) s += 35; // a large offset, far from identical
        teacher[r * V + x] = t;
        student[r * V + x] = s;
      }
    }
    let worstLoss = 0, worstGrad = 0;
    for (const divergence of ['fkl', 'rkl'] as Divergence[]) {
      for (const temperature of [0.25, 1, 4]) {
        const opts = { rows, vocab: V, divergence, temperature, grad: true };
        const w = expectMatches(kdLoss(teacher, student, opts), referenceKdLoss(teacher, student, opts), rows * V, 1e-13, 1e-8,
          (r) => `${divergence} T=${temperature} row ${r}`);
        worstLoss = Math.max(worstLoss, w.loss);
        worstGrad = Math.max(worstGrad, w.grad);
      }
    }
    console.log(`one-sweep rows: worst relative error ${worstLoss.toExponential(2)} on losses, ` +
      `${worstGrad.toExponential(2)} on gradient entries > 1e-6`);
  });

  it('mask, the mean over included rows, T^2 scaling, and sync == async', async () => {
    const rows = 5, V = 300;
    const { teacher, student } = pairs(rows, V, 77);
    const mask = Uint8Array.from([1, 0, 1, 1, 0]);
    for (const divergence of DIVERGENCES) {
      const opts = { rows, vocab: V, divergence, temperature: 2, mask, grad: true, scaleByTemperatureSquared: true };
      const got = kdLoss(teacher, student, opts);
      const want = referenceKdLoss(teacher, student, opts);
      expect(got.loss).toBeCloseTo(want.loss, 6);
      expect(got.perRow[1]).toBe(0);
      expect(got.grad!.subarray(V, 2 * V).every((g) => g === 0)).toBe(true);
      for (let i = 0; i < rows * V; i++) {
        if (Math.abs(want.grad![i]!) > 1e-6) expect(Math.abs(got.grad![i]! - want.grad![i]!)).toBeLessThanOrEqual(1e-4 * Math.abs(want.grad![i]!));
      }
      const a = await kdLossAsync(teacher, student, opts);
      expect(a.loss).toBe(got.loss);
      expect(Array.from(a.grad!)).toEqual(Array.from(got.grad!));
      // gradOut receives the same gradient; grad is absent unless asked for; an all-zero mask gives 0.
      const out = new Float32Array(rows * V).fill(7);
      const viaOut = kdLoss(teacher, student, { ...opts, grad: undefined, gradOut: out });
      expect(viaOut.grad).toBe(out);
      expect(Array.from(out)).toEqual(Array.from(got.grad!));
      expect(kdLoss(teacher, student, { rows, vocab: V, divergence }).grad).toBeUndefined();
      expect(kdLoss(teacher, student, { rows, vocab: V, divergence, mask: new Uint8Array(rows) }).loss).toBe(0);
    }
  });
});

describe('kdLoss properties (native)', () => {
  const rows = 6, V = 2000;
  const { teacher, student } = pairs(rows, V, 5);
  const per = (t: Float32Array, s: Float32Array, divergence: Divergence, beta = 0.5, temperature = 1) =>
    kdLoss(t, s, { rows, vocab: V, divergence, beta, temperature }).perRow;

  it('every divergence is >= 0, and exactly 0 with a zero gradient when teacher == student', () => {
    for (const divergence of DIVERGENCES) {
      for (const temperature of TEMPERATURES) {
        expect(per(teacher, student, divergence, 0.5, temperature).every((v) => v >= 0)).toBe(true);
        const same = kdLoss(teacher, teacher, { rows, vocab: V, divergence, temperature, grad: true });
        expect(same.perRow.every((v) => v === 0)).toBe(true);
        expect(same.grad!.every((g) => g === 0)).toBe(true);
      }
    }
  });

  it('JSD(0.5) symmetric and <= ln 2, TVD <= 1, Pinsker, FKL(p, q) = RKL(q, p)', () => {
    const j1 = per(teacher, student, 'jsd'), j2 = per(student, teacher, 'jsd');
    const tvd = per(teacher, student, 'tvd'), fkl = per(teacher, student, 'fkl'), rkl = per(student, teacher, 'rkl');
    for (let r = 0; r < rows; r++) {
      expect(Math.abs(j1[r]! - j2[r]!)).toBeLessThanOrEqual(1e-6 * j1[r]!);
      expect(j1[r]).toBeLessThanOrEqual(Math.LN2);
      expect(tvd[r]).toBeLessThanOrEqual(1);
      expect(tvd[r]!).toBeLessThanOrEqual(Math.sqrt(fkl[r]! / 2));
      expect(Math.abs(fkl[r]! - rkl[r]!)).toBeLessThanOrEqual(1e-6 * fkl[r]!);
    }
  });

  it('invariant to adding a constant to a row of logits', () => {
    // Logits on a 2^-12 grid, shifted by integers: the shifted inputs are exact in float32,
    // so any difference comes from the kernel, not from rounding the inputs.
    const q = (v: number) => Math.round(v * 4096) / 4096;
    const t0 = Float32Array.from(teacher, q), s0 = Float32Array.from(student, q);
    const shifted = Float32Array.from(t0, (v, i) => v + (Math.floor(i / V) % 2 ? 7 : -3));
    const shiftedS = Float32Array.from(s0, (v) => v + 11);
    for (const divergence of DIVERGENCES) {
      const a = kdLoss(t0, s0, { rows, vocab: V, divergence, grad: true });
      const b = kdLoss(shifted, shiftedS, { rows, vocab: V, divergence, grad: true });
      for (let r = 0; r < rows; r++) expect(Math.abs(a.perRow[r]! - b.perRow[r]!)).toBeLessThanOrEqual(1e-5 * a.perRow[r]!);
      for (let i = 0; i < rows * V; i++) {
        if (Math.abs(a.grad![i]!) > 1e-6) expect(Math.abs(a.grad![i]! - b.grad![i]!)).toBeLessThanOrEqual(1e-4 * Math.abs(a.grad![i]!));
      }
    }
  });

  it('rows are bitwise identical alone, at any batch position, with 1 or 2 threads', () => {
    // The gradient is that of the mean over included rows, so a row's gradient is compared
    // within batches of the same size; its perRow value also alone.
    const order = [4, 0, 5, 2, 1, 3];
    const permute = (a: Float32Array) => {
      const out = new Float32Array(a.length);
      order.forEach((r, j) => out.set(a.subarray(r * V, (r + 1) * V), j * V));
      return out;
    };
    for (const divergence of DIVERGENCES) {
      setThreads(1);
      const one = kdLoss(teacher, student, { rows, vocab: V, divergence, grad: true });
      setThreads(2);
      const two = kdLoss(teacher, student, { rows, vocab: V, divergence, grad: true });
      expect(Array.from(two.perRow)).toEqual(Array.from(one.perRow));
      expect(new Uint32Array(two.grad!.buffer)).toEqual(new Uint32Array(one.grad!.buffer));
      const moved = kdLoss(permute(teacher), permute(student), { rows, vocab: V, divergence, grad: true });
      order.forEach((r, j) => {
        expect(moved.perRow[j]).toBe(one.perRow[r]);
        expect(new Uint32Array(moved.grad!.slice(j * V, (j + 1) * V).buffer)).toEqual(new Uint32Array(one.grad!.slice(r * V, (r + 1) * V).buffer));
      });
      const r = 4;
      const alone = kdLoss(teacher.slice(r * V, (r + 1) * V), student.slice(r * V, (r + 1) * V), { rows: 1, vocab: V, divergence });
      expect(alone.perRow[0]).toBe(one.perRow[r]);
    }
  });
});

describe('kdLoss across kernel levels', () => {
  it('AVX2 and AVX-512 give identical bits; the portable kernels agree within 1e-6', () => {
    const b = native();
    const before = b.simd();
    const levels = (['avx512', 'avx2', 'portable'] as const).filter((l) => b.setSimd(l));
    const V = 5000, rows = 4;
    const { teacher, student } = pairs(rows, V, 404);
    try {
      for (const divergence of DIVERGENCES) {
        for (const temperature of [0.5, 2]) {
          const runs = levels.map((l) => {
            b.setSimd(l);
            return { level: l, r: kdLoss(teacher, student, { rows, vocab: V, divergence, temperature, grad: true }) };
          });
          const avx = runs.filter((x) => x.level !== 'portable');
          for (const x of avx.slice(1)) {
            expect(new Uint32Array(x.r.perRow.buffer), `${divergence} ${x.level}`).toEqual(new Uint32Array(avx[0]!.r.perRow.buffer));
            expect(new Uint32Array(x.r.grad!.buffer), `${divergence} ${x.level}`).toEqual(new Uint32Array(avx[0]!.r.grad!.buffer));
          }
          const portable = runs.find((x) => x.level === 'portable');
          if (portable && runs[0]!.level !== 'portable') {
            for (let r = 0; r < rows; r++) {
              const a = portable.r.perRow[r]!, c = runs[0]!.r.perRow[r]!;
              expect(Math.abs(a - c), `${divergence} row ${r}`).toBeLessThanOrEqual(1e-6 * c + 1e-12);
            }
          }
        }
      }
    } finally {
      b.setSimd(before);
    }
  });
});

describe('acceptanceRate: the link to speculative decoding', () => {
  it('equals 1 - TVD at the same temperature without filters, and the reference with filters', async () => {
    const rows = 8, V = 500;
    const { teacher, student } = pairs(rows, V, 9);
    for (const temperature of TEMPERATURES) {
      const acc = acceptanceRate(teacher, student, { rows, vocab: V, target: { temperature } });
      const tvd = kdLoss(teacher, student, { rows, vocab: V, divergence: 'tvd', temperature }).perRow;
      for (let r = 0; r < rows; r++) expect(Math.abs(acc[r]! - (1 - tvd[r]!))).toBeLessThanOrEqual(2e-6);
    }
    const target: SamplingParams[] = Array.from({ length: rows }, (_, r) => [{ temperature: 0.7, topK: 20 }, { temperature: 1.3, topP: 0.8 }, { temperature: 0 }, { temperature: 1, minP: 0.05 }][r % 4]!);
    const draft: SamplingParams = { temperature: 0.9, topK: 50 };
    const got = acceptanceRate(teacher, student, { rows, vocab: V, target, draft });
    const want = referenceAcceptanceRate(teacher, student, { rows, vocab: V, target, draft });
    for (let r = 0; r < rows; r++) expect(Math.abs(got[r]! - want[r]!)).toBeLessThanOrEqual(2e-6);
    expect(Array.from(await acceptanceRateAsync(teacher, student, { rows, vocab: V, target, draft }))).toEqual(Array.from(got));
  });

  it('matches the empirical acceptance of verify() over 100,000 draws within 4 standard errors', () => {
    const N = 100_000, V = 40;
    const n = normal(rng(31));
    const zt = Float32Array.from({ length: V }, () => 1.5 * n());
    const zd = Float32Array.from(zt, (v) => v + 0.8 * n());
    const cases: [SamplingParams, SamplingParams][] = [
      [{ temperature: 1 }, { temperature: 1 }],
      [{ temperature: 0.6 }, { temperature: 1.4 }],
      [{ temperature: 1.2, topK: 8 }, { temperature: 1.2, topP: 0.85 }],
      [{ temperature: 0.8, topP: 0.9 }, { temperature: 0.5, topK: 5 }],
    ];
    const target = new Float32Array(N * 2 * V), draft = new Float32Array(N * V);
    const row = new Float32Array(2 * V);
    row.set(zt, 0);
    row.set(zt, V);
    tile(target, row);
    tile(draft, zd);
    cases.forEach(([tp, dp], i) => {
      const expected = acceptanceRate(zt, zd, { rows: 1, vocab: V, target: tp, draft: dp })[0]!;
      const seeds = BigUint64Array.from({ length: N }, (_, r) => BigInt(i) * 1_000_003n + BigInt(r));
      const draftTokens = sample(draft, { rows: N, vocab: V, params: dp, seeds });
      const r = verify({ targetLogits: target, draftLogits: draft, draftTokens, batch: N, gamma: 1, vocab: V, target: tp, draft: dp, seeds });
      const accepted = r.accepted.reduce((a, b) => a + b, 0) / N;
      const se = Math.sqrt((expected * (1 - expected)) / N);
      console.log(`acceptance ${JSON.stringify(tp)} / ${JSON.stringify(dp)}: expected ${expected.toFixed(4)}, realised ${accepted.toFixed(4)} (${((accepted - expected) / se).toFixed(2)} SE)`);
      expect(Math.abs(accepted - expected)).toBeLessThanOrEqual(4 * se);
    });
  });
});

describe('kdLoss and acceptanceRate errors', () => {
  const t = new Float32Array(12).fill(0.5), s = new Float32Array(12).fill(0.25);
  const base = { rows: 3, vocab: 4, divergence: 'fkl' as Divergence };
  function expectError(fn: () => unknown, code: string, ...parts: string[]) {
    let caught: unknown;
    try {
      fn();
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(SpeculaError);
    expect((caught as SpeculaError).code, (caught as Error).message).toBe(code);
    for (const p of parts) expect((caught as Error).message).toContain(p);
  }

  it('rejects bad options and logits with a code', async () => {
    for (const temperature of [0, -1, NaN, Infinity]) expectError(() => kdLoss(t, s, { ...base, temperature }), 'E_VALUE', 'temperature');
    for (const beta of [0, 1, 1.5, -0.1, NaN]) expectError(() => kdLoss(t, s, { ...base, divergence: 'jsd', beta }), 'E_VALUE', 'beta');
    expectError(() => kdLoss(t, s, { ...base, divergence: 'kl' as Divergence }), 'E_VALUE', 'divergence', '"kl"');
    expectError(() => kdLoss(t, s, { ...base, divergence: 3 as unknown as Divergence }), 'E_ARG', 'divergence');
    expectError(() => kdLoss(t, new Float32Array(11), base), 'E_SHAPE', 'studentLogits');
    expectError(() => kdLoss(new Float32Array(13), s, base), 'E_SHAPE', 'teacherLogits');
    expectError(() => kdLoss(t, s, { ...base, mask: new Uint8Array(2) }), 'E_SHAPE', 'mask');
    expectError(() => kdLoss(t, s, { ...base, mask: [1, 1, 1] as unknown as Uint8Array }), 'E_ARG', 'mask');
    expectError(() => kdLoss(t, s, { ...base, grad: 'yes' as unknown as boolean }), 'E_ARG', 'grad');
    expectError(() => kdLoss(t, s, { ...base, gradOut: new Float32Array(5) }), 'E_SHAPE', 'gradOut');
    expectError(() => kdLoss(t, s, { ...base, gradOut: s }), 'E_ARG', 'gradOut', 'share memory');
    expectError(() => kdLoss(t, s, { ...base, grad: false, gradOut: new Float32Array(12) }), 'E_ARG', 'grad');
    expectError(() => kdLoss(t, s, { ...base, temprature: 2 } as never), 'E_ARG', 'temprature', 'unknown option');
    for (const bad of [NaN, Infinity, -Infinity]) {
      const u = s.slice();
      u[6] = bad;
      expectError(() => kdLoss(t, u, base), 'E_VALUE', 'studentLogits[6]', 'row 1, token 2');
      expectError(() => acceptanceRate(t, u, { rows: 3, vocab: 4, target: { temperature: 1 } }), 'E_VALUE', 'draftLogits[6]');
    }
    // The teacher's row is reported first, wherever in the row each bad logit is.
    const V = 5000, tt = new Float32Array(2 * V), ss = new Float32Array(2 * V);
    ss[V + 100] = NaN;
    tt[V + 4500] = Infinity;
    for (const divergence of DIVERGENCES) {
      expectError(() => kdLoss(tt, ss, { rows: 2, vocab: V, divergence }), 'E_VALUE', 'teacherLogits[9500]', 'row 1, token 4500');
    }
    const u = s.slice();
    u[6] = NaN;
    await expect(kdLossAsync(t, u, base)).rejects.toMatchObject({ code: 'E_VALUE' });
    // A masked-out row is never read.
    expect(kdLoss(t, u, { ...base, mask: Uint8Array.from([1, 0, 1]) }).perRow[1]).toBe(0);
    expectError(() => acceptanceRate(t, s, { rows: 3, vocab: 4, target: { temperature: -1 } }), 'E_VALUE', 'target.temperature');
    expectError(() => acceptanceRate(t, s, { rows: 3, vocab: 4, target: [{ temperature: 1 }] }), 'E_SHAPE', 'target');
  });
});
