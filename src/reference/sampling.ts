/**
 * Float64 reference of sample / probabilities / verify, written from the definition
 * (sort, cumulate, normalise) and consuming the same Philox streams as the native
 * kernels, so that both give the same tokens. Slow on purpose; used by the tests and
 * the benchmarks' baseline.
 *
 * Every result carries `margin`: how close the closest decision that produced it came
 * to its boundary (probability units). Float32 native arithmetic can only disagree
 * with this reference where the margin is tiny.
 */
import type { SamplingParams } from '../validate.js';
import { Domain, uniform } from './philox.js';

const RESIDUAL_FLOOR = 1e-12;

export interface ReferenceDistribution {
  /** Normalised probabilities (V). */
  p: Float64Array;
  /** Distance of the filter decisions (top-p cut, min-p cut) from their thresholds; Infinity if none. */
  margin: number;
}

/** p = renormalize(min-p(top-p(top-k(softmax(z / T))))); T = 0: one-hot at the first argmax. */
export function referenceDistribution(z: ArrayLike<number>, params: SamplingParams): ReferenceDistribution {
  const V = z.length;
  const p = new Float64Array(V);
  const order = Array.from({ length: V }, (_, i) => i);
  order.sort((a, b) => (z[b]! - z[a]!) || (a - b));
  const T = params.temperature;
  if (T === 0) {
    p[order[0]!] = 1;
    return { p, margin: Infinity };
  }
  const zmax = z[order[0]!]!;
  const w = new Float64Array(V);
  for (let x = 0; x < V; x++) w[x] = Math.exp((z[x]! - zmax) / T);
  let margin = Infinity;
  let kept = V;
  const k = params.topK ?? 0;
  if (k >= 1 && k < V) kept = k;
  const topP = params.topP ?? 1;
  if (topP < 1) {
    let total = 0;
    for (let r = 0; r < kept; r++) total += w[order[r]!]!;
    const target = topP * total;
    let cum = 0;
    for (let r = 0; r < kept; r++) {
      const before = cum;
      cum += w[order[r]!]!;
      if (cum >= target) {
        margin = Math.min(margin, (cum - target) / total, (target - before) / total);
        kept = r + 1;
        break;
      }
    }
  }
  const minP = params.minP ?? 0;
  let total = 0;
  for (let r = 0; r < kept; r++) {
    const x = order[r]!;
    if (minP > 0) {
      margin = Math.min(margin, Math.abs(w[x]! - minP));
      if (w[x]! < minP) continue;
    }
    p[x] = w[x]!;
    total += w[x]!;
  }
  for (let x = 0; x < V; x++) p[x]! /= total;
  return { p, margin };
}

/** Smallest x with sum_{y <= x} weight(y) > u * total, and the distance of u * total from the nearest boundary / total. */
export function inverseCdf(weight: ArrayLike<number>, u: number): { token: number; margin: number } {
  let total = 0;
  for (let x = 0; x < weight.length; x++) total += weight[x]!;
  const target = u * total;
  let cum = 0;
  let last = -1;
  for (let x = 0; x < weight.length; x++) {
    const w = weight[x]!;
    if (w <= 0) continue;
    const before = cum;
    cum += w;
    last = x;
    if (cum > target) return { token: x, margin: Math.min(target - before, cum - target) / total };
  }
  return { token: last, margin: 0 };
}

function toBig(v: number | bigint): bigint {
  return typeof v === 'bigint' ? v : BigInt(v);
}

function paramsAt(params: SamplingParams | SamplingParams[], row: number): SamplingParams {
  return Array.isArray(params) ? params[row]! : params;
}

export interface ReferenceSampleOptions {
  rows: number;
  vocab: number;
  params: SamplingParams | SamplingParams[];
  seeds: ArrayLike<number | bigint>;
  offsets?: ArrayLike<number>;
}

export function referenceProbabilities(
  logits: ArrayLike<number>, opts: { rows: number; vocab: number; params: SamplingParams | SamplingParams[] },
): Float64Array {
  const out = new Float64Array(opts.rows * opts.vocab);
  for (let r = 0; r < opts.rows; r++) {
    const z = Array.prototype.slice.call(logits, r * opts.vocab, (r + 1) * opts.vocab) as number[];
    out.set(referenceDistribution(z, paramsAt(opts.params, r)).p, r * opts.vocab);
  }
  return out;
}

export function referenceSample(
  logits: ArrayLike<number>, opts: ReferenceSampleOptions,
): { tokens: Int32Array; margin: Float64Array } {
  const tokens = new Int32Array(opts.rows);
  const margin = new Float64Array(opts.rows);
  for (let r = 0; r < opts.rows; r++) {
    const z = Array.prototype.slice.call(logits, r * opts.vocab, (r + 1) * opts.vocab) as number[];
    const d = referenceDistribution(z, paramsAt(opts.params, r));
    const u = uniform(toBig(opts.seeds[r]!), BigInt(opts.offsets?.[r] ?? 0), 0, Domain.sample);
    const s = inverseCdf(d.p, u);
    tokens[r] = s.token;
    margin[r] = Math.min(d.margin, s.margin);
  }
  return { tokens, margin };
}

export interface ReferenceVerifyOptions {
  targetLogits: ArrayLike<number>;
  draftLogits: ArrayLike<number>;
  draftTokens: ArrayLike<number>;
  draftLengths?: ArrayLike<number>;
  batch: number;
  gamma: number;
  vocab: number;
  target: SamplingParams | SamplingParams[];
  draft?: SamplingParams | SamplingParams[];
  seeds: ArrayLike<number | bigint>;
  offsets?: ArrayLike<number>;
}

export interface ReferenceVerifyResult {
  tokens: Int32Array;
  accepted: Int32Array;
  emitted: Int32Array;
  acceptProbability: Float64Array;
  expectedAcceptance: Float64Array;
  /** Per row: the smallest margin of any decision that produced the row's tokens. */
  margin: Float64Array;
}

export function referenceVerify(o: ReferenceVerifyOptions): ReferenceVerifyResult {
  const { batch: B, gamma: G, vocab: V } = o;
  const draftParams = o.draft ?? o.target;
  const res: ReferenceVerifyResult = {
    tokens: new Int32Array(B * (G + 1)).fill(-1),
    accepted: new Int32Array(B),
    emitted: new Int32Array(B),
    acceptProbability: new Float64Array(B * G).fill(NaN),
    expectedAcceptance: new Float64Array(B * G).fill(NaN),
    margin: new Float64Array(B).fill(Infinity),
  };
  const row = (a: ArrayLike<number>, start: number) =>
    Array.prototype.slice.call(a, start * V, (start + 1) * V) as number[];
  for (let b = 0; b < B; b++) {
    const L = o.draftLengths?.[b] ?? G;
    const seed = toBig(o.seeds[b]!);
    const offset = BigInt(o.offsets?.[b] ?? 0);
    const tp = paramsAt(o.target, b), dp = paramsAt(draftParams, b);
    let n = -1; // first rejection
    let emittedToken = -1;
    let margin = Infinity;
    for (let i = 0; i < L; i++) {
      const P = referenceDistribution(row(o.targetLogits, b * (G + 1) + i), tp);
      const Q = referenceDistribution(row(o.draftLogits, b * G + i), dp);
      const x = o.draftTokens[b * G + i]!;
      const px = P.p[x]!, qx = Q.p[x]!;
      const ratio = qx > 0 ? Math.min(1, px / qx) : px > 0 ? 1 : 0;
      let overlap = 0;
      for (let y = 0; y < V; y++) overlap += Math.min(P.p[y]!, Q.p[y]!);
      res.acceptProbability[b * G + i] = ratio;
      res.expectedAcceptance[b * G + i] = overlap;
      if (n >= 0) continue; // statistics only, after the first rejection
      const u = uniform(seed, offset + BigInt(i), 0, Domain.accept);
      margin = Math.min(margin, P.margin, Q.margin, Math.abs(u - ratio));
      if (u < ratio) continue;
      n = i;
      const ue = uniform(seed, offset + BigInt(i), 0, Domain.emit);
      const resid = new Float64Array(V);
      let mass = 0;
      for (let y = 0; y < V; y++) {
        resid[y] = Math.max(0, P.p[y]! - Q.p[y]!);
        mass += resid[y]!;
      }
      const s = inverseCdf(mass > RESIDUAL_FLOOR ? resid : P.p, ue);
      emittedToken = s.token;
      // The residual's margin in probability units (s.margin is relative to its total).
      margin = Math.min(margin, s.margin * (mass > RESIDUAL_FLOOR ? mass : 1));
    }
    if (n < 0) {
      n = L;
      const P = referenceDistribution(row(o.targetLogits, b * (G + 1) + L), tp);
      const s = inverseCdf(P.p, uniform(seed, offset + BigInt(L), 0, Domain.emit));
      emittedToken = s.token;
      margin = Math.min(margin, P.margin, s.margin);
    }
    for (let i = 0; i < n; i++) res.tokens[b * (G + 1) + i] = o.draftTokens[b * G + i]!;
    res.tokens[b * (G + 1) + n] = emittedToken;
    res.accepted[b] = n;
    res.emitted[b] = n + 1;
    res.margin[b] = margin;
  }
  return res;
}
