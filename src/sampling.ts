/**
 * The sampling kernels: sample, probabilities and verify (temperature-scaled
 * speculative verification), each with an Async twin that runs off the JS thread.
 * Semantics: README "Sampling semantics" and native/core/distribution.h; randomness:
 * native/core/philox.h. The work happens in native/core; this file validates and packs.
 */
import { withCallerStack } from './errors.js';
import { native, type PackedParams } from './native.js';
import {
  dimension, fail, float32, int32, knownKeys, object, packDevice, packOffsets, packParams, packSeeds,
  type Device, type PerRow, type SamplingParams,
} from './validate.js';

export type { Device, PerRow, SamplingParams };

export interface SampleOptions {
  rows: number;
  vocab: number;
  params: PerRow<SamplingParams>;
  /** One seed per row (uint64: a non-negative safe integer or a bigint). */
  seeds: ArrayLike<number | bigint>;
  /** Position counter per row (default 0): the draw of row r is a pure function of (seeds[r], offsets[r]). */
  offsets?: ArrayLike<number>;
  /** Where it runs (default 'auto': CUDA when available and the logits are at least 4 MiB; see backends()). */
  device?: Device;
}

export interface ProbabilitiesOptions {
  rows: number;
  vocab: number;
  params: PerRow<SamplingParams>;
  /** Where it runs (default 'auto': CUDA when available and the logits are at least 4 MiB; see backends()). */
  device?: Device;
}

export interface VerifyOptions {
  /** [batch, gamma + 1, vocab]: the target's logits at each drafted position and the bonus position. */
  targetLogits: Float32Array;
  /** [batch, gamma, vocab]: the draft's logits that the draft tokens were sampled from. */
  draftLogits: Float32Array;
  /** [batch, gamma]: the drafted tokens; entries past draftLengths[b] are ignored. */
  draftTokens: Int32Array;
  /** [batch]: drafted tokens per row, each 0..gamma (default gamma). */
  draftLengths?: Int32Array;
  batch: number;
  gamma: number;
  vocab: number;
  /** Target sampling parameters: one for all rows or one per row. */
  target: PerRow<SamplingParams>;
  /** The parameters the draft tokens were sampled with (default: target). */
  draft?: PerRow<SamplingParams>;
  /** One seed per row. */
  seeds: ArrayLike<number | bigint>;
  /** Position of each row's first drafted token (default 0). */
  offsets?: ArrayLike<number>;
  /** Where it runs (default 'auto': CUDA when available and the logits are at least 4 MiB; see backends()). */
  device?: Device;
}

export interface VerifyResult {
  /** [batch, gamma + 1]: the emitted tokens of each row (accepted drafts, then one more), -1 padded. */
  tokens: Int32Array;
  /** [batch]: accepted draft tokens. */
  accepted: Int32Array;
  /** [batch]: emitted tokens = accepted + 1. */
  emitted: Int32Array;
  /** [batch, gamma]: min(1, p(x)/q(x)) at each drafted token; NaN past draftLengths. */
  acceptProbability: Float32Array;
  /** [batch, gamma]: sum_x min(p(x), q(x)) at each drafted position; NaN past draftLengths. */
  expectedAcceptance: Float32Array;
}

const SAMPLE_KEYS = ['rows', 'vocab', 'params', 'seeds', 'offsets', 'device'] as const;
const PROB_KEYS = ['rows', 'vocab', 'params', 'device'] as const;
const VERIFY_KEYS = [
  'targetLogits', 'draftLogits', 'draftTokens', 'draftLengths', 'batch', 'gamma', 'vocab',
  'target', 'draft', 'seeds', 'offsets', 'device',
] as const;

/** The options shared by the row-wise kernels: rows, vocab, logits [rows, vocab], params. */
function prepareRows(logits: unknown, options: unknown, keys: readonly string[]) {
  const o = object('options', options);
  knownKeys('options', o, keys);
  const rows = dimension('rows', o.rows, 0);
  const vocab = dimension('vocab', o.vocab, 1);
  return {
    o, rows, vocab,
    logits: float32('logits', logits, rows * vocab, '[rows, vocab]'),
    params: packParams('params', o.params, rows),
    device: packDevice(o.device),
  };
}

function prepareSample(logits: unknown, options: unknown) {
  const a = prepareRows(logits, options, SAMPLE_KEYS);
  return { ...a, seeds: packSeeds(a.o.seeds, a.rows), offsets: packOffsets(a.o.offsets, a.rows), out: new Int32Array(a.rows) };
}

/**
 * Draws one token per row from the row's distribution (exactly the one probabilities()
 * returns), using the Philox stream of (seeds[r], offsets[r], domain "sample").
 * logits: [rows, vocab]. Returns [rows] token ids.
 */
export function sample(logits: Float32Array, options: SampleOptions): Int32Array {
  const a = prepareSample(logits, options);
  native().sample(a.logits, a.rows, a.vocab, a.params, a.seeds, a.offsets, a.out, false, a.device);
  return a.out;
}

/** Awaits native work queued by an async binding; failures carry the caller's stack. */
async function settle<T>(caller: Error, work: Promise<void> | undefined, result: T): Promise<T> {
  try {
    await work;
  } catch (err) {
    throw withCallerStack(err, caller);
  }
  return result;
}

/** sample() on a worker thread. Do not modify `logits` until the promise settles. */
export async function sampleAsync(logits: Float32Array, options: SampleOptions): Promise<Int32Array> {
  const caller = new Error();
  const a = prepareSample(logits, options);
  return settle(caller, native().sample(a.logits, a.rows, a.vocab, a.params, a.seeds, a.offsets, a.out, true, a.device), a.out);
}

function prepareProbabilities(logits: unknown, options: unknown) {
  const a = prepareRows(logits, options, PROB_KEYS);
  return { ...a, out: new Float32Array(a.rows * a.vocab) };
}

/** The distribution that sample() draws from, [rows, vocab] (rows sum to 1). */
export function probabilities(logits: Float32Array, options: ProbabilitiesOptions): Float32Array {
  const a = prepareProbabilities(logits, options);
  native().probabilities(a.logits, a.rows, a.vocab, a.params, a.out, false, a.device);
  return a.out;
}

/** probabilities() on a worker thread. Do not modify `logits` until the promise settles. */
export async function probabilitiesAsync(logits: Float32Array, options: ProbabilitiesOptions): Promise<Float32Array> {
  const caller = new Error();
  const a = prepareProbabilities(logits, options);
  return settle(caller, native().probabilities(a.logits, a.rows, a.vocab, a.params, a.out, true, a.device), a.out);
}

function prepareVerify(options: unknown) {
  const o = object('options', options);
  knownKeys('options', o, VERIFY_KEYS);
  const batch = dimension('batch', o.batch, 0);
  const gamma = dimension('gamma', o.gamma, 0);
  const vocab = dimension('vocab', o.vocab, 1);
  const targetLogits = float32('targetLogits', o.targetLogits, batch * (gamma + 1) * vocab, '[batch, gamma + 1, vocab]');
  const draftLogits = float32('draftLogits', o.draftLogits, batch * gamma * vocab, '[batch, gamma, vocab]');
  const draftTokens = int32('draftTokens', o.draftTokens, batch * gamma, '[batch, gamma]');
  const draftLengths = o.draftLengths === undefined ? null : int32('draftLengths', o.draftLengths, batch, '[batch]');
  const target = packParams('target', o.target, batch);
  const draft = o.draft === undefined ? target : packParams('draft', o.draft, batch);
  if (o.seeds === undefined) fail('E_ARG', 'seeds', `an Array of ${batch} seeds`, o.seeds);
  const result: VerifyResult = {
    tokens: new Int32Array(batch * (gamma + 1)),
    accepted: new Int32Array(batch),
    emitted: new Int32Array(batch),
    acceptProbability: new Float32Array(batch * gamma),
    expectedAcceptance: new Float32Array(batch * gamma),
  };
  const args = [
    targetLogits, draftLogits, draftTokens, draftLengths, batch, gamma, vocab, target, draft,
    packSeeds(o.seeds, batch), packOffsets(o.offsets, batch),
    result.tokens, result.accepted, result.emitted, result.acceptProbability, result.expectedAcceptance,
  ] as const;
  return { args, result, device: packDevice(o.device) };
}

/**
 * Speculative verification of a batch of drafted blocks (Leviathan et al. / Chen et al.):
 * accepts drafted token x_i with probability min(1, p_i(x_i) / q_i(x_i)) (uniforms from
 * the "accept" stream at offsets[b] + i), emits a token from normalize(max(0, p_n - q_n))
 * at the first rejection n, or a bonus token from p_L when all L = draftLengths[b] drafts
 * are accepted (uniform from the "emit" stream). The emitted tokens are distributed
 * exactly as if the target had sampled them one by one.
 */
export function verify(options: VerifyOptions): VerifyResult {
  const { args, result, device } = prepareVerify(options);
  native().verify(...args, false, device);
  return result;
}

/** verify() on a worker thread. Do not modify the input arrays until the promise settles. */
export async function verifyAsync(options: VerifyOptions): Promise<VerifyResult> {
  const caller = new Error();
  const { args, result, device } = prepareVerify(options);
  return settle(caller, native().verify(...args, true, device), result);
}
