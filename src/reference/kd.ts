/**
 * Float64 reference of the knowledge-distillation (KD) divergences and their gradients
 * with respect to the student logits, written straight from the definitions. Slow and
 * simple on purpose: it is the yardstick the native kernel is checked against.
 *
 * Per row (a contiguous slice of `vocab` logits), with temperature T > 0:
 *   teacher p = softmax(zt / T), student q = softmax(zs / T)
 *   fkl: KL(p||q) = sum_x p log(p/q)
 *   rkl: KL(q||p) = sum_x q log(q/p)
 *   jsd: beta KL(p||m) + (1-beta) KL(q||m),  m = beta p + (1-beta) q
 *   tvd: 0.5 sum_x |p - q|
 *
 * Every log(p), log(q), log(m) is a log-probability computed by log-sum-exp from the
 * logits, never Math.log of a probability, so a probability that underflows to 0 still
 * has a finite log and its x log(x/y) term comes out as 0 * finite = 0 (the convention
 * x log(x/y) -> 0 as x -> 0), while a tiny q against a moderate p still gives the right,
 * large log ratio.
 *
 * Gradients are d/dzs. With s = zs / T and g_k = dL/dq_k, the softmax Jacobian gives
 *   dL/dzs_j = (1/T) q_j (g_j - sum_k q_k g_k),
 * which for the four divergences is
 *   fkl: (q_j - p_j) / T
 *   rkl: q_j (log(q_j/p_j) - RKL) / T
 *   jsd: (1-beta) q_j (log(q_j/m_j) - KL(q||m)) / T
 *   tvd: q_j (0.5 sign(q_j - p_j) - 0.5 sum_k q_k sign(q_k - p_k)) / T   (subgradient, sign(0) = 0)
 */
import type { Divergence, KdLossOptions } from '../kd.js';
import type { SamplingParams } from '../validate.js';
import { referenceDistribution } from './sampling.js';

export type { Divergence } from '../kd.js';

/** The options of kdLoss (src/kd.ts), without the output buffer. */
export type ReferenceKdOptions = Omit<KdLossOptions, 'gradOut'>;

export interface ReferenceKdResult {
  /** Mean of perRow over the included rows; 0 when no row is included. */
  loss: number;
  /** Per-row divergence (times T^2 if scaled), 0 for excluded rows. (rows) */
  perRow: Float64Array;
  /** d loss / d studentLogits (rows, vocab); 0 for excluded rows. Present only when opts.grad. */
  grad?: Float64Array;
}

const DIVERGENCES: readonly Divergence[] = ['fkl', 'rkl', 'jsd', 'tvd'];

/**
 * Compensated (Neumaier) summation: the sums below add up to 50,000 terms, whose plain
 * double rounding (~1e-16 per addition, growing with the count) would otherwise show in
 * the divergences of near-identical rows, which are tiny differences of such sums.
 */
class Sum {
  private s = 0;
  private c = 0;
  add(x: number): void {
    const t = this.s + x;
    this.c += Math.abs(this.s) >= Math.abs(x) ? (this.s - t) + x : (x - t) + this.s;
    this.s = t;
  }
  get value(): number {
    return this.s + this.c;
  }
}

/** log(exp(a) + exp(b)), stable for finite a, b. */
function logAddExp(a: number, b: number): number {
  const hi = Math.max(a, b), lo = Math.min(a, b);
  return hi + Math.log1p(Math.exp(lo - hi));
}

/**
 * log softmax(z[start .. start+V) / T): out[x] = (z[x] - zmax)/T - log(sum_y exp((z[y] - zmax)/T)),
 * with the maximum subtracted from the logits before dividing by T, so exp never
 * overflows and a near-certain token's log-probability (close to 0) is not the small
 * difference of two large numbers: the sum is 1 + (the others), and log1p of the others
 * keeps their full precision. out: (V)
 */
function logSoftmax(z: ArrayLike<number>, start: number, V: number, T: number): Float64Array {
  const out = new Float64Array(V);
  let imax = 0;
  for (let x = 1; x < V; x++) if (z[start + x]! > z[start + imax]!) imax = x;
  const zmax = z[start + imax]!;
  const rest = new Sum(); // sum of exp over every token but the (first) maximum
  for (let x = 0; x < V; x++) {
    out[x] = (z[start + x]! - zmax) / T;
    if (x !== imax) rest.add(Math.exp(out[x]!));
  }
  const lse = Math.log1p(rest.value);
  for (let x = 0; x < V; x++) out[x] = out[x]! - lse;
  return out;
}

/**
 * One row: the divergence between p = exp(lp) and q = exp(lq) and, if `grad` is given,
 * the gradient d divergence / d zs written into it (unscaled: includes 1/T, not T^2 or
 * the 1/n of the mean). lp, lq, grad: (V)
 */
function rowDivergence(
  lp: Float64Array, lq: Float64Array, divergence: Divergence, T: number, beta: number,
  grad: Float64Array | undefined,
): number {
  const V = lp.length;
  const p = lp.map(Math.exp), q = lq.map(Math.exp);
  switch (divergence) {
    case 'fkl': {
      // KL(p||q) = sum p (log p - log q)
      const sum = new Sum();
      for (let x = 0; x < V; x++) sum.add(p[x]! * (lp[x]! - lq[x]!));
      const kl = sum.value;
      if (grad) for (let j = 0; j < V; j++) grad[j] = (q[j]! - p[j]!) / T;
      return kl;
    }
    case 'rkl': {
      // KL(q||p) = sum q (log q - log p)
      const sum = new Sum();
      for (let x = 0; x < V; x++) sum.add(q[x]! * (lq[x]! - lp[x]!));
      const kl = sum.value;
      if (grad) for (let j = 0; j < V; j++) grad[j] = q[j]! * (lq[j]! - lp[j]! - kl) / T;
      return kl;
    }
    case 'jsd': {
      // m = beta p + (1-beta) q; with r = lq - lp,
      //   log(p/m) = -log(beta + (1-beta) e^r),  log(q/m) = -log(beta e^-r + (1-beta)),
      // taken as -log1p((1-beta) expm1(r)) and -log1p(beta expm1(-r)) for |r| < 1, so
      // that near-identical rows keep the precision of r (log m - log p as a difference
      // of two log-probabilities would carry their rounding), else by logaddexp.
      const lb = Math.log(beta), l1b = Math.log1p(-beta);
      const pm = new Float64Array(V), qm = new Float64Array(V); // log(p/m), log(q/m)
      for (let x = 0; x < V; x++) {
        const r = lq[x]! - lp[x]!;
        const near = Math.abs(r) < 1;
        pm[x] = near ? -Math.log1p((1 - beta) * Math.expm1(r)) : -logAddExp(lb, l1b + r);
        qm[x] = near ? -Math.log1p(beta * Math.expm1(-r)) : -logAddExp(lb - r, l1b);
      }
      const sumPM = new Sum(), sumQM = new Sum();
      for (let x = 0; x < V; x++) {
        sumPM.add(p[x]! * pm[x]!);
        sumQM.add(q[x]! * qm[x]!);
      }
      const klPM = sumPM.value, klQM = sumQM.value;
      if (grad) for (let j = 0; j < V; j++) grad[j] = (1 - beta) * q[j]! * (qm[j]! - klQM) / T;
      return beta * klPM + (1 - beta) * klQM;
    }
    case 'tvd': {
      // 0.5 sum |p - q|; dL/dq_k = 0.5 sign(q_k - p_k)
      // |p - q| = max(p, q) (1 - e^-|r|), r = lq - lp: no cancellation where p ~ q.
      const sumTv = new Sum(), sumG = new Sum();
      for (let x = 0; x < V; x++) {
        sumTv.add(-Math.max(p[x]!, q[x]!) * Math.expm1(-Math.abs(lq[x]! - lp[x]!)));
        sumG.add(q[x]! * 0.5 * Math.sign(q[x]! - p[x]!));
      }
      const tv = sumTv.value, meanG = sumG.value;
      if (grad) for (let j = 0; j < V; j++) grad[j] = q[j]! * (0.5 * Math.sign(q[j]! - p[j]!) - meanG) / T;
      return 0.5 * tv;
    }
  }
}

/**
 * KD divergence of student from teacher, row by row, its mean over the included rows
 * and (optionally) the gradient of that mean with respect to the student logits.
 * teacherLogits, studentLogits: (rows, vocab), row-major.
 */
export function referenceKdLoss(
  teacherLogits: ArrayLike<number>, studentLogits: ArrayLike<number>, opts: ReferenceKdOptions,
): ReferenceKdResult {
  const { rows, vocab: V, divergence } = opts;
  const T = opts.temperature ?? 1;
  const beta = opts.beta ?? 0.5;
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`referenceKdLoss: rows must be an integer >= 0, got ${rows}`);
  if (!Number.isInteger(V) || V < 1) throw new Error(`referenceKdLoss: vocab must be an integer >= 1, got ${V}`);
  if (!DIVERGENCES.includes(divergence)) {
    throw new Error(`referenceKdLoss: divergence must be one of ${DIVERGENCES.join(', ')}, got ${String(divergence)}`);
  }
  if (!(T > 0 && Number.isFinite(T))) throw new Error(`referenceKdLoss: temperature must be finite and > 0, got ${T}`);
  if (!(beta > 0 && beta < 1)) throw new Error(`referenceKdLoss: beta must be in (0, 1), got ${beta}`);
  if (teacherLogits.length !== rows * V) {
    throw new Error(`referenceKdLoss: teacherLogits must have rows * vocab = ${rows * V} entries, got ${teacherLogits.length}`);
  }
  if (studentLogits.length !== rows * V) {
    throw new Error(`referenceKdLoss: studentLogits must have rows * vocab = ${rows * V} entries, got ${studentLogits.length}`);
  }
  if (opts.mask !== undefined && opts.mask.length !== rows) {
    throw new Error(`referenceKdLoss: mask must have one entry per row (${rows}), got ${opts.mask.length}`);
  }
  for (let i = 0; i < rows * V; i++) {
    if (!Number.isFinite(teacherLogits[i]!) || !Number.isFinite(studentLogits[i]!)) {
      throw new Error(`referenceKdLoss: logits must be finite (entry ${i})`);
    }
  }

  const included = (r: number) => opts.mask === undefined || opts.mask[r] !== 0;
  let n = 0; // number of included rows
  for (let r = 0; r < rows; r++) if (included(r)) n++;
  const scale = opts.scaleByTemperatureSquared ? T * T : 1;

  const perRow = new Float64Array(rows);                             // (rows)
  const grad = opts.grad ? new Float64Array(rows * V) : undefined;   // (rows, vocab)
  const rowGrad = opts.grad ? new Float64Array(V) : undefined;       // (vocab)
  let sum = 0;
  for (let r = 0; r < rows; r++) {
    if (!included(r)) continue; // perRow and grad stay 0
    const lp = logSoftmax(teacherLogits, r * V, V, T); // teacher log-probabilities (vocab)
    const lq = logSoftmax(studentLogits, r * V, V, T); // student log-probabilities (vocab)
    perRow[r] = scale * rowDivergence(lp, lq, divergence, T, beta, rowGrad);
    sum += perRow[r]!;
    // d mean / d zs = (d perRow / d zs) / n
    if (grad && rowGrad) for (let j = 0; j < V; j++) grad[r * V + j] = scale * rowGrad[j]! / n;
  }
  const result: ReferenceKdResult = { loss: n > 0 ? sum / n : 0, perRow };
  if (grad) result.grad = grad;
  return result;
}

/**
 * Expected acceptance rate of speculative decoding, per row: sum_x min(p(x), q(x)), where
 * p and q are the sampling distributions of the target and draft rows (temperature and
 * top-k / top-p / min-p filters, as in referenceDistribution). `draft` defaults to `target`;
 * one params object applies to every row, an array gives one per row.
 * targetLogits, draftLogits: (rows, vocab). Returns (rows).
 */
export function referenceAcceptanceRate(
  targetLogits: ArrayLike<number>, draftLogits: ArrayLike<number>,
  opts: { rows: number; vocab: number; target: SamplingParams | SamplingParams[]; draft?: SamplingParams | SamplingParams[] },
): Float64Array {
  const { rows, vocab: V } = opts;
  const draft = opts.draft ?? opts.target;
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`referenceAcceptanceRate: rows must be an integer >= 0, got ${rows}`);
  if (!Number.isInteger(V) || V < 1) throw new Error(`referenceAcceptanceRate: vocab must be an integer >= 1, got ${V}`);
  if (targetLogits.length !== rows * V) {
    throw new Error(`referenceAcceptanceRate: targetLogits must have rows * vocab = ${rows * V} entries, got ${targetLogits.length}`);
  }
  if (draftLogits.length !== rows * V) {
    throw new Error(`referenceAcceptanceRate: draftLogits must have rows * vocab = ${rows * V} entries, got ${draftLogits.length}`);
  }
  for (const [name, params] of [['target', opts.target], ['draft', draft]] as const) {
    if (Array.isArray(params) && params.length !== rows) {
      throw new Error(`referenceAcceptanceRate: ${name} must be one SamplingParams or an Array of ${rows}, got ${params.length}`);
    }
  }
  const at = (params: SamplingParams | SamplingParams[], r: number) => (Array.isArray(params) ? params[r]! : params);
  const row = (a: ArrayLike<number>, r: number) => Array.prototype.slice.call(a, r * V, (r + 1) * V) as number[];

  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const p = referenceDistribution(row(targetLogits, r), at(opts.target, r)).p; // (vocab)
    const q = referenceDistribution(row(draftLogits, r), at(draft, r)).p;        // (vocab)
    let overlap = 0;
    for (let x = 0; x < V; x++) overlap += Math.min(p[x]!, q[x]!);
    out[r] = overlap;
  }
  return out;
}
