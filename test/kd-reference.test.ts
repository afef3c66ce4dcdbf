// Tests of the float64 knowledge-distillation reference (src/reference/kd.ts), which the
// native KD kernel will later be checked against: analytic gradients against central
// finite differences of the reference's own loss, the mean / mask / T^2 bookkeeping,
// the textbook properties of the divergences, values where probabilities underflow,
// and the expected acceptance rate sum_x min(p, q) of speculative decoding.
import { describe, expect, it } from 'vitest';
import {
  referenceAcceptanceRate, referenceKdLoss, type Divergence, type ReferenceKdOptions,
} from '../src/reference/index.js';
import type { SamplingParams } from '../src/validate.js';
import { normal, rng } from './helpers/stats.js';

const TEMPERATURES = [0.25, 0.5, 1, 2, 4];
const DIVERGENCES: Divergence[] = ['fkl', 'rkl', 'jsd', 'tvd'];
/** Every (divergence, beta) the gradient tests cover; beta only matters for jsd. */
const CASES: { divergence: Divergence; beta?: number }[] = [
  { divergence: 'fkl' }, { divergence: 'rkl' },
  { divergence: 'jsd', beta: 0.1 }, { divergence: 'jsd', beta: 0.5 }, { divergence: 'jsd', beta: 0.9 },
  { divergence: 'tvd' },
];

/** softmax(z / T) of one row, written independently of the reference. (V) */
function softmax(z: ArrayLike<number>, T: number): Float64Array {
  let max = -Infinity;
  for (let x = 0; x < z.length; x++) max = Math.max(max, z[x]! / T);
  const e = Float64Array.from({ length: z.length }, (_, x) => Math.exp(z[x]! / T - max));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function argmax(z: ArrayLike<number>): number {
  let best = 0;
  for (let x = 1; x < z.length; x++) if (z[x]! > z[best]!) best = x;
  return best;
}

/** Row r of a flat (rows, V) array. (V) */
function rowOf(a: ArrayLike<number>, r: number, V: number): Float64Array {
  return Float64Array.from({ length: V }, (_, x) => a[r * V + x]!);
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** Expects |a - b| <= rel * |b| + abs elementwise, naming the first failing index. */
function expectClose(a: ArrayLike<number>, b: ArrayLike<number>, rel: number, abs: number, what: string): void {
  expect(a.length, what).toBe(b.length);
  for (let i = 0; i < a.length; i++) {
    const tol = rel * Math.abs(b[i]!) + abs;
    if (!(Math.abs(a[i]! - b[i]!) <= tol)) {
      expect.fail(`${what}[${i}]: ${a[i]} vs ${b[i]} (|diff| ${Math.abs(a[i]! - b[i]!)} > ${tol})`);
    }
  }
}

/** Gaussian logits (rows, V) with standard deviation `scale`. */
function gaussianLogits(n: () => number, rows: number, V: number, scale: number): Float64Array {
  return Float64Array.from({ length: rows * V }, () => scale * n());
}

/**
 * One (teacher, student) row pair whose p and q differ clearly at every token at
 * temperature T: |p_x - q_x| > 1e-2 max(p_x, q_x). The student is the teacher with each
 * logit moved up or down by 0.5..1.5 (times T), so the log ratio log(q/p) is spread out
 * and ties are rare; the rare tied draw is rejected.
 */
function tieFreeRow(next: () => number, n: () => number, V: number, scale: number, T: number): [Float64Array, Float64Array] {
  for (;;) {
    const zt = Float64Array.from({ length: V }, () => scale * n());
    const zs = zt.map((v) => v + (next() < 0.5 ? -1 : 1) * (0.5 + next()) * T);
    const p = softmax(zt, T), q = softmax(zs, T);
    let ok = true;
    for (let x = 0; x < V; x++) if (!(Math.abs(p[x]! - q[x]!) > 1e-2 * Math.max(p[x]!, q[x]!))) ok = false;
    if (ok) return [zt, zs];
  }
}

/** The reference's loss for one row (rows = 1, no mask, no scaling). */
function rowLoss(zt: ArrayLike<number>, zs: ArrayLike<number>, o: Omit<ReferenceKdOptions, 'rows' | 'vocab'>): number {
  return referenceKdLoss(zt, zs, { ...o, rows: 1, vocab: zt.length, grad: false }).perRow[0]!;
}

describe('referenceKdLoss gradients match central finite differences', () => {
  for (const { divergence, beta } of CASES) {
    for (const T of TEMPERATURES) {
      it(`${divergence}${beta === undefined ? '' : ` beta=${beta}`} T=${T}`, () => {
        const seed = 1000 * DIVERGENCES.indexOf(divergence) + Math.round(100 * (beta ?? 0)) + Math.round(8 * T);
        const next = rng(seed), n = normal(next);
        const shapes = [{ V: 7, scale: 1 }, { V: 19, scale: 2 }, { V: 40, scale: 3 }];
        let checked = 0;
        for (const { V, scale } of shapes) {
          const [zt, zs] = divergence === 'tvd'
            ? tieFreeRow(next, n, V, scale, T)
            : [gaussianLogits(n, 1, V, scale), gaussianLogits(n, 1, V, scale)];
          const o = { divergence, temperature: T, ...(beta === undefined ? {} : { beta }) };
          const g = referenceKdLoss(zt, zs, { ...o, rows: 1, vocab: V, grad: true }).grad!;
          const p = softmax(zt, T);
          const h = 1e-5 * scale;
          for (let j = 0; j < V; j++) {
            const plus = Float64Array.from(zs), minus = Float64Array.from(zs);
            plus[j]! += h;
            minus[j]! -= h;
            if (divergence === 'tvd') {
              // Away from ties: no sign(q_x - p_x) changes anywhere within the perturbed range.
              const q0 = softmax(zs, T), qp = softmax(plus, T), qm = softmax(minus, T);
              for (let x = 0; x < V; x++) {
                const s = Math.sign(q0[x]! - p[x]!);
                expect(s).not.toBe(0);
                expect(Math.sign(qp[x]! - p[x]!)).toBe(s);
                expect(Math.sign(qm[x]! - p[x]!)).toBe(s);
              }
            }
            const fPlus = rowLoss(zt, plus, o), fMinus = rowLoss(zt, minus, o);
            const fd = (fPlus - fMinus) / (2 * h);
            // Absolute floor: 1e-9, plus the rounding noise of the difference quotient,
            // ~ (a few dozen ulps of the loss) / h, which matters where the loss is large (T = 0.25).
            const noise = (1e-14 * Math.max(Math.abs(fPlus), Math.abs(fMinus))) / h;
            expectClose([fd], [g[j]!], 1e-4, 1e-9 + noise, `V=${V} d/dzs_${j}: finite difference vs analytic`);
            checked++;
          }
        }
        expect(checked).toBe(7 + 19 + 40);
      });
    }
  }

  for (const { divergence, beta } of CASES) {
    it(`${divergence}${beta === undefined ? '' : ` beta=${beta}`}: mean over the mask, zero excluded rows, T^2 scaling`, () => {
      const next = rng(77 + DIVERGENCES.indexOf(divergence) + Math.round(10 * (beta ?? 0))), n = normal(next);
      const rows = 5, V = 11;
      const mask = Uint8Array.from([1, 0, 1, 1, 0]);
      const included = 3;
      for (const T of [0.5, 2]) {
        // Teacher / student (rows, V); tie-free rows so that TVD is differentiable.
        const zt = new Float64Array(rows * V), zs = new Float64Array(rows * V);
        for (let r = 0; r < rows; r++) {
          const [a, b] = tieFreeRow(next, n, V, 1.5, T);
          zt.set(a, r * V);
          zs.set(b, r * V);
        }
        const o = { divergence, temperature: T, rows, vocab: V, mask, grad: true, ...(beta === undefined ? {} : { beta }) };
        const plain = referenceKdLoss(zt, zs, o);
        const scaled = referenceKdLoss(zt, zs, { ...o, scaleByTemperatureSquared: true });
        let sum = 0;
        for (let r = 0; r < rows; r++) {
          const one = referenceKdLoss(rowOf(zt, r, V), rowOf(zs, r, V), { ...o, rows: 1, mask: undefined });
          const gPlain = rowOf(plain.grad!, r, V), gScaled = rowOf(scaled.grad!, r, V);
          if (mask[r]) {
            expect(one.perRow[0]!).toBeGreaterThan(0);
            expectClose([plain.perRow[r]!], [one.perRow[0]!], 1e-14, 0, `perRow ${r}`);
            expectClose([scaled.perRow[r]!], [T * T * one.perRow[0]!], 1e-14, 0, `scaled perRow ${r}`);
            expectClose(gPlain, one.grad!.map((v) => v / included), 1e-14, 1e-300, `grad row ${r}`);
            expectClose(gScaled, one.grad!.map((v) => (T * T * v) / included), 1e-14, 1e-300, `scaled grad row ${r}`);
            sum += one.perRow[0]!;
          } else {
            expect(plain.perRow[r]).toBe(0);
            expect(scaled.perRow[r]).toBe(0);
            expect(maxAbs(gPlain)).toBe(0);
            expect(maxAbs(gScaled)).toBe(0);
          }
        }
        expectClose([plain.loss], [sum / included], 1e-14, 0, 'loss = mean over included rows');
        expectClose([scaled.loss], [(T * T * sum) / included], 1e-14, 0, 'scaled loss = T^2 mean');

        // The returned gradient is the gradient of the returned (scaled, masked, mean) loss.
        const h = 1e-5;
        for (const i of [0, 5, V + 3, 2 * V + 10, 3 * V, 4 * V + 7]) {
          const plus = Float64Array.from(zs), minus = Float64Array.from(zs);
          plus[i]! += h;
          minus[i]! -= h;
          const fd = (referenceKdLoss(zt, plus, { ...o, grad: false, scaleByTemperatureSquared: true }).loss
            - referenceKdLoss(zt, minus, { ...o, grad: false, scaleByTemperatureSquared: true }).loss) / (2 * h);
          expectClose([fd], [scaled.grad![i]!], 1e-4, 1e-9, `d loss / d zs[${i}]`);
        }
      }
    });
  }

  it('no mask includes every row; an all-zero mask gives loss 0 and a zero gradient', () => {
    const n = normal(rng(5));
    const rows = 4, V = 9;
    const zt = gaussianLogits(n, rows, V, 2), zs = gaussianLogits(n, rows, V, 2);
    for (const divergence of DIVERGENCES) {
      const all = referenceKdLoss(zt, zs, { rows, vocab: V, divergence, grad: true });
      const ones = referenceKdLoss(zt, zs, { rows, vocab: V, divergence, grad: true, mask: new Uint8Array(rows).fill(1) });
      expect(all.loss).toBe(ones.loss);
      expect(Array.from(all.grad!)).toEqual(Array.from(ones.grad!));
      expectClose([all.loss], [all.perRow.reduce((a, b) => a + b, 0) / rows], 1e-14, 0, 'mean');
      const none = referenceKdLoss(zt, zs, { rows, vocab: V, divergence, grad: true, mask: new Uint8Array(rows) });
      expect(none.loss).toBe(0);
      expect(maxAbs(none.perRow)).toBe(0);
      expect(maxAbs(none.grad!)).toBe(0);
      expect(referenceKdLoss(zt, zs, { rows, vocab: V, divergence }).grad).toBeUndefined();
    }
  });
});

describe('referenceKdLoss properties', () => {
  const rows = 40, V = 23;
  /** Teacher / student pairs: unrelated, close (student = teacher + small noise), and peaked. */
  function pairs(seed: number): { name: string; zt: Float64Array; zs: Float64Array }[] {
    const n = normal(rng(seed));
    const out = [];
    for (const scale of [0.3, 2, 6]) out.push({ name: `random scale ${scale}`, zt: gaussianLogits(n, rows, V, scale), zs: gaussianLogits(n, rows, V, scale) });
    const zt = gaussianLogits(n, rows, V, 2);
    out.push({ name: 'close', zt, zs: zt.map((v) => v + 1e-3 * n()) });
    return out;
  }
  const run = (zt: ArrayLike<number>, zs: ArrayLike<number>, divergence: Divergence, T: number, extra: Partial<ReferenceKdOptions> = {}) =>
    referenceKdLoss(zt, zs, { rows, vocab: V, divergence, temperature: T, ...extra });

  it('every divergence is >= 0, and 0 with a zero gradient when teacher == student', () => {
    for (const { name, zt, zs } of pairs(11)) {
      for (const T of [0.5, 1, 2]) {
        for (const divergence of DIVERGENCES) {
          for (const beta of divergence === 'jsd' ? [0.1, 0.5, 0.9] : [0.5]) {
            const r = run(zt, zs, divergence, T, { beta });
            for (let i = 0; i < rows; i++) expect(r.perRow[i], `${name} ${divergence} T=${T} row ${i}`).toBeGreaterThanOrEqual(0);
            const same = run(zt, zt, divergence, T, { beta, grad: true });
            expect(maxAbs(same.perRow)).toBeLessThanOrEqual(1e-12);
            expect(maxAbs(same.grad!)).toBeLessThanOrEqual(1e-12);
          }
        }
      }
    }
  });

  it('JSD(beta = 0.5) is symmetric and <= ln 2; TVD <= 1; Pinsker TVD <= sqrt(FKL / 2); FKL(p, q) = RKL(q, p)', () => {
    for (const { name, zt, zs } of pairs(12)) {
      for (const T of [0.5, 1, 2]) {
        const jsd = run(zt, zs, 'jsd', T).perRow, jsdSwapped = run(zs, zt, 'jsd', T).perRow;
        const tvd = run(zt, zs, 'tvd', T).perRow, fkl = run(zt, zs, 'fkl', T).perRow;
        const rklSwapped = run(zs, zt, 'rkl', T).perRow;
        expectClose(jsdSwapped, jsd, 1e-12, 1e-300, `${name} T=${T} JSD symmetric`);
        expectClose(rklSwapped, fkl, 1e-12, 1e-300, `${name} T=${T} FKL(p,q) = RKL(q,p)`);
        for (let i = 0; i < rows; i++) {
          expect(jsd[i]!).toBeLessThanOrEqual(Math.LN2);
          expect(tvd[i]!).toBeLessThanOrEqual(1);
          expect(tvd[i]!).toBeLessThanOrEqual(Math.sqrt(fkl[i]! / 2) + 1e-15);
        }
      }
    }
    // Disjoint-looking supports push JSD towards ln 2 and TVD towards 1, without passing them.
    const zt = Float64Array.from({ length: 2 * 4 }, (_, i) => (i % 4 < 2 ? 40 : -40) * (i < 4 ? 1 : -1));
    const zs = Float64Array.from({ length: 2 * 4 }, (_, i) => (i % 4 < 2 ? -40 : 40) * (i < 4 ? 1 : -1));
    const jsd = referenceKdLoss(zt, zs, { rows: 2, vocab: 4, divergence: 'jsd' }).perRow;
    const tvd = referenceKdLoss(zt, zs, { rows: 2, vocab: 4, divergence: 'tvd' }).perRow;
    for (let i = 0; i < 2; i++) {
      expect(jsd[i]!).toBeCloseTo(Math.LN2, 12);
      expect(jsd[i]!).toBeLessThanOrEqual(Math.LN2);
      expect(tvd[i]!).toBeCloseTo(1, 12);
      expect(tvd[i]!).toBeLessThanOrEqual(1);
    }
  });

  it('loss and gradient are unchanged by adding a constant to a row of teacher or student logits', () => {
    const n = normal(rng(13));
    for (const { name, zt, zs } of pairs(13)) {
      const ct = Float64Array.from({ length: rows }, () => 5 * n()), cs = Float64Array.from({ length: rows }, () => 5 * n());
      const zt2 = zt.map((v, i) => v + ct[Math.floor(i / V)]!), zs2 = zs.map((v, i) => v + cs[Math.floor(i / V)]!);
      for (const T of [0.5, 1, 2]) {
        for (const divergence of DIVERGENCES) {
          for (const beta of divergence === 'jsd' ? [0.1, 0.5, 0.9] : [0.5]) {
            const a = run(zt, zs, divergence, T, { beta, grad: true });
            for (const [tt, ss] of [[zt2, zs], [zt, zs2], [zt2, zs2]] as const) {
              const b = run(tt, ss, divergence, T, { beta, grad: true });
              const what = `${name} ${divergence} T=${T} beta=${beta}`;
              // Absolute floor 1e-14: z + c is itself rounded (~1e-15 for |z + c| ~ 10), which moves
              // a tiny divergence (the 'close' pairs, ~1e-8) and the cancelling gradient q - p by ~1e-15 / T.
              expectClose([b.loss], [a.loss], 1e-12, 1e-14, `${what} loss`);
              expectClose(b.perRow, a.perRow, 1e-12, 1e-14, `${what} perRow`);
              expectClose(b.grad!, a.grad!, 1e-12, 1e-14 + 1e-12 * maxAbs(a.grad!), `${what} grad`);
            }
          }
        }
      }
    }
  });
});

describe('referenceKdLoss where probabilities underflow', () => {
  // Teacher [0, -800]: p = [1, exp(-800)], and exp(-800) underflows to 0 in float64, but
  // log p = [0, -800] exactly. Student [0, 0]: q = [1/2, 1/2]. Exact values:
  //   FKL = ln 2, RKL = 400 - ln 2, JSD(1/2) = (3/4) ln(4/3), TVD = 1/2,
  //   d RKL / d zs = q (log(q/p) - RKL) = [-200, 200], d FKL / d zs = q - p = [-1/2, 1/2].
  const zt = [0, -800], zs = [0, 0];
  const kd = (divergence: Divergence) => referenceKdLoss(zt, zs, { rows: 1, vocab: 2, divergence, grad: true });

  it('uses log-probabilities, not log of an underflowed probability', () => {
    expect(kd('fkl').loss).toBeCloseTo(Math.LN2, 14);
    expect(kd('rkl').loss).toBeCloseTo(400 - Math.LN2, 11);
    expect(kd('jsd').loss).toBeCloseTo(0.75 * Math.log(4 / 3), 14);
    expect(kd('tvd').loss).toBeCloseTo(0.5, 14);
    expectClose(kd('rkl').grad!, [-200, 200], 1e-13, 0, 'RKL gradient');
    expectClose(kd('fkl').grad!, [-0.5, 0.5], 1e-15, 0, 'FKL gradient');
    // Swapped: the student's second probability underflows; FKL(p, q) is the large one now.
    const swapped = referenceKdLoss(zs, zt, { rows: 1, vocab: 2, divergence: 'fkl', grad: true });
    expect(swapped.loss).toBeCloseTo(400 - Math.LN2, 11);
    expectClose(swapped.grad!, [0.5, -0.5], 1e-15, 0, 'swapped FKL gradient');
  });

  it('is finite and shift-invariant for logits in the thousands and tiny temperatures', () => {
    const n = normal(rng(21));
    const rows = 6, V = 30;
    const zt = gaussianLogits(n, rows, V, 40), zs = gaussianLogits(n, rows, V, 40);
    for (const T of [0.05, 1]) {
      for (const divergence of DIVERGENCES) {
        const a = referenceKdLoss(zt, zs, { rows, vocab: V, divergence, temperature: T, grad: true });
        const b = referenceKdLoss(zt.map((v) => v + 5000), zs.map((v) => v - 3000),
          { rows, vocab: V, divergence, temperature: T, grad: true });
        expect(Number.isFinite(a.loss) && a.grad!.every(Number.isFinite)).toBe(true);
        // z + 5000 is rounded to ~1e-12 absolute, i.e. ~2e-11 after dividing by T = 0.05; the
        // near one-hot rows make some gradients pure cancellation noise of that size, hence the floor.
        expectClose([b.loss], [a.loss], 1e-8, 1e-9, `${divergence} T=${T} loss`);
        expectClose(b.grad!, a.grad!, 1e-8, 1e-9, `${divergence} T=${T} grad`);
      }
    }
  });
});

describe('referenceKdLoss input checks', () => {
  const zt = new Float64Array(6), zs = new Float64Array(6);
  const o: ReferenceKdOptions = { rows: 2, vocab: 3, divergence: 'fkl' };
  it('throws plain Errors naming the problem', () => {
    expect(() => referenceKdLoss(zt.subarray(1), zs, o)).toThrow(/teacherLogits/);
    expect(() => referenceKdLoss(zt, zs.subarray(1), o)).toThrow(/studentLogits/);
    expect(() => referenceKdLoss(zt, zs, { ...o, temperature: 0 })).toThrow(/temperature/);
    expect(() => referenceKdLoss(zt, zs, { ...o, temperature: -1 })).toThrow(/temperature/);
    expect(() => referenceKdLoss(zt, zs, { ...o, divergence: 'jsd', beta: 0 })).toThrow(/beta/);
    expect(() => referenceKdLoss(zt, zs, { ...o, divergence: 'jsd', beta: 1 })).toThrow(/beta/);
    expect(() => referenceKdLoss(zt, zs, { ...o, divergence: 'kl' as Divergence })).toThrow(/divergence/);
    expect(() => referenceKdLoss(zt, zs, { ...o, mask: new Uint8Array(3) })).toThrow(/mask/);
    expect(() => referenceKdLoss(zt, zs, { ...o, rows: 3 })).toThrow(/rows \* vocab/);
  });
});

describe('referenceAcceptanceRate', () => {
  const rows = 24, V = 30;

  it('without filters equals 1 - TVD at the same temperature', () => {
    const n = normal(rng(31));
    const zt = gaussianLogits(n, rows, V, 2), zd = gaussianLogits(n, rows, V, 2);
    for (const T of [0.3, 1, 1.7]) {
      const acc = referenceAcceptanceRate(zt, zd, { rows, vocab: V, target: { temperature: T } });
      const tvd = referenceKdLoss(zt, zd, { rows, vocab: V, divergence: 'tvd', temperature: T }).perRow;
      expectClose(acc, tvd.map((v) => 1 - v), 0, 1e-12, `T=${T} acceptance = 1 - TVD`);
    }
  });

  it('with temperature 0 on both sides is 1 where the argmaxes agree and 0 where they differ', () => {
    const next = rng(32), n = normal(next);
    const zt = gaussianLogits(n, rows, V, 2), zd = new Float64Array(rows * V);
    for (let r = 0; r < rows; r++) {
      for (let x = 0; x < V; x++) zd[r * V + x] = zt[r * V + x]! + 0.05 * n();
      // Every other row: lift some other token of the draft above everything.
      if (r % 2 === 1) zd[r * V + ((argmax(rowOf(zt, r, V)) + 1 + Math.floor(next() * (V - 1))) % V)] = 100;
    }
    const acc = referenceAcceptanceRate(zt, zd, { rows, vocab: V, target: { temperature: 0 } });
    let agree = 0;
    for (let r = 0; r < rows; r++) {
      const same = argmax(rowOf(zt, r, V)) === argmax(rowOf(zd, r, V));
      expect(acc[r], `row ${r}`).toBe(same ? 1 : 0);
      if (same) agree++;
    }
    expect(agree).toBeGreaterThan(0);
    expect(agree).toBeLessThan(rows);
  });

  it('with top-k = 1 on the target equals the draft probability of the target argmax', () => {
    const n = normal(rng(33));
    const zt = gaussianLogits(n, rows, V, 2), zd = gaussianLogits(n, rows, V, 2);
    for (const Td of [0.5, 1, 2]) {
      const acc = referenceAcceptanceRate(zt, zd, { rows, vocab: V, target: { temperature: 1, topK: 1 }, draft: { temperature: Td } });
      for (let r = 0; r < rows; r++) {
        const q = softmax(rowOf(zd, r, V), Td);
        expectClose([acc[r]!], [q[argmax(rowOf(zt, r, V))]!], 1e-12, 0, `Td=${Td} row ${r}`);
      }
    }
  });

  it('takes one params object for all rows or one per row; draft defaults to target', () => {
    const n = normal(rng(34));
    const R = 4;
    const zt = gaussianLogits(n, R, V, 2), zd = gaussianLogits(n, R, V, 2);
    const target: SamplingParams[] = [{ temperature: 1 }, { temperature: 0.6, topP: 0.9 }, { temperature: 0 }, { temperature: 1.4, topK: 5, minP: 0.05 }];
    const draft: SamplingParams[] = [{ temperature: 0.8 }, { temperature: 1, topK: 7 }, { temperature: 0.5 }, { temperature: 1.4 }];
    const acc = referenceAcceptanceRate(zt, zd, { rows: R, vocab: V, target, draft });
    const defaulted = referenceAcceptanceRate(zt, zd, { rows: R, vocab: V, target });
    const explicit = referenceAcceptanceRate(zt, zd, { rows: R, vocab: V, target, draft: target });
    expect(Array.from(defaulted)).toEqual(Array.from(explicit));
    for (let r = 0; r < R; r++) {
      const one = referenceAcceptanceRate(rowOf(zt, r, V), rowOf(zd, r, V), { rows: 1, vocab: V, target: target[r]!, draft: draft[r]! });
      expect(acc[r]).toBe(one[0]);
      expect(acc[r]!).toBeGreaterThanOrEqual(0);
      expect(acc[r]!).toBeLessThanOrEqual(1 + 1e-15);
    }
    // Same logits, same params: the distributions coincide and the acceptance is 1.
    const self = referenceAcceptanceRate(zt, zt, { rows: R, vocab: V, target });
    expectClose(self, new Float64Array(R).fill(1), 0, 1e-14, 'self acceptance');
    expect(() => referenceAcceptanceRate(zt, zd, { rows: R, vocab: V, target: target.slice(1) })).toThrow(/target/);
    expect(() => referenceAcceptanceRate(zt.subarray(1), zd, { rows: R, vocab: V, target })).toThrow(/targetLogits/);
  });
});
