/**
 * Knowledge-distillation divergences between a teacher (the target) and a student (the
 * draft), with gradients, and the expected acceptance rate of speculative decoding.
 * The work happens in native/core/kd.cc (math and numerics documented in kd.h); this
 * file validates and packs.
 */
import { withCallerStack } from './errors.js';
import { native } from './native.js';
import {
  dimension, fail, float32, knownKeys, object, packDevice, packParams, type Device, type PerRow, type SamplingParams,
} from './validate.js';

export type Divergence = 'fkl' | 'rkl' | 'jsd' | 'tvd';
const DIVERGENCES: readonly Divergence[] = ['fkl', 'rkl', 'jsd', 'tvd'];

export interface KdLossOptions {
  rows: number;
  vocab: number;
  /** fkl = KL(p||q), rkl = KL(q||p), jsd = beta KL(p||m) + (1-beta) KL(q||m), tvd = 1/2 sum |p - q|. */
  divergence: Divergence;
  /** p = softmax(teacher / T), q = softmax(student / T). Default 1, must be > 0. */
  temperature?: number;
  /** JSD mixing weight, m = beta p + (1 - beta) q. Default 0.5, in (0, 1). */
  beta?: number;
  /** [rows], 1 = include the row, 0 = ignore it (its logits are not read). Default: all rows. */
  mask?: Uint8Array;
  /** Also return d loss / d studentLogits. */
  grad?: boolean;
  /**
   * Write the gradient into this [rows, vocab] array (implies grad) instead of a new one:
   * in a training loop this saves allocating and page-faulting rows * vocab floats per call.
   */
  gradOut?: Float32Array;
  /** Multiply loss, perRow and gradient by T^2 (Hinton et al.'s convention). */
  scaleByTemperatureSquared?: boolean;
  /** Where it runs (default 'auto': CUDA when available and the logits are at least 4 MiB; see backends()). */
  device?: Device;
}

export interface KdLossResult {
  /** Mean of perRow over the included rows (0 if no row is included). */
  loss: number;
  /** [rows]: each row's divergence, 0 for excluded rows. */
  perRow: Float32Array;
  /** [rows, vocab]: d loss / d studentLogits (1/T of the chain rule included), 0 for excluded rows. */
  grad?: Float32Array;
}

export interface AcceptanceRateOptions {
  rows: number;
  vocab: number;
  /** The target's sampling parameters (one for all rows or one per row). */
  target: PerRow<SamplingParams>;
  /** The draft's (default: the target's). */
  draft?: PerRow<SamplingParams>;
  /** Where it runs (default 'auto': CUDA when available and the logits are at least 4 MiB; see backends()). */
  device?: Device;
}

const KD_KEYS = ['rows', 'vocab', 'divergence', 'temperature', 'beta', 'mask', 'grad', 'gradOut', 'scaleByTemperatureSquared', 'device'] as const;
const AR_KEYS = ['rows', 'vocab', 'target', 'draft', 'device'] as const;

function prepareKd(teacherLogits: unknown, studentLogits: unknown, options: unknown) {
  const o = object('options', options);
  knownKeys('options', o, KD_KEYS);
  const rows = dimension('rows', o.rows, 0);
  const vocab = dimension('vocab', o.vocab, 1);
  const teacher = float32('teacherLogits', teacherLogits, rows * vocab, '[rows, vocab]');
  const student = float32('studentLogits', studentLogits, rows * vocab, '[rows, vocab]');
  const divergence = DIVERGENCES.indexOf(o.divergence as Divergence);
  if (divergence < 0) {
    fail(typeof o.divergence === 'string' ? 'E_VALUE' : 'E_ARG', 'divergence', "'fkl', 'rkl', 'jsd' or 'tvd'", o.divergence);
  }
  const temperature = o.temperature ?? 1;
  if (typeof temperature !== 'number') fail('E_ARG', 'temperature', 'a number > 0', temperature);
  if (!(Number.isFinite(temperature) && temperature > 0)) fail('E_VALUE', 'temperature', 'a finite number > 0', temperature);
  const beta = o.beta ?? 0.5;
  if (typeof beta !== 'number') fail('E_ARG', 'beta', 'a number in (0, 1)', beta);
  if (!(beta > 0 && beta < 1)) fail('E_VALUE', 'beta', 'a number in (0, 1)', beta);
  let mask: Uint8Array | null = null;
  if (o.mask !== undefined) {
    if (!(o.mask instanceof Uint8Array)) fail('E_ARG', 'mask', `a Uint8Array [rows] of 0 and 1`, o.mask);
    if (o.mask.length !== rows) fail('E_SHAPE', 'mask', `a Uint8Array of length rows = ${rows}`, o.mask);
    mask = o.mask;
  }
  for (const flag of ['grad', 'scaleByTemperatureSquared'] as const) {
    if (o[flag] !== undefined && typeof o[flag] !== 'boolean') fail('E_ARG', flag, 'a boolean', o[flag]);
  }
  const perRow = new Float32Array(rows);
  let grad: Float32Array | null = null;
  if (o.gradOut !== undefined) {
    if (o.grad === false) fail('E_ARG', 'grad', 'true or absent when gradOut is given', o.grad);
    grad = float32('gradOut', o.gradOut, rows * vocab, '[rows, vocab]');
    if (grad.buffer === teacher.buffer || grad.buffer === student.buffer) {
      fail('E_ARG', 'gradOut', 'an array that does not share memory with the logits', o.gradOut);
    }
  } else if (o.grad === true) {
    grad = new Float32Array(rows * vocab);
  }
  const args = [
    teacher, student, rows, vocab, divergence as 0 | 1 | 2 | 3, temperature, beta, mask,
    o.scaleByTemperatureSquared === true, perRow, grad,
  ] as const;
  return { args, perRow, grad, device: packDevice(o.device) };
}

function result(loss: number, perRow: Float32Array, grad: Float32Array | null): KdLossResult {
  return grad ? { loss, perRow, grad } : { loss, perRow };
}

/**
 * The KD divergence between teacher and student distributions at a temperature, per row
 * and averaged over the included rows, optionally with its gradient with respect to the
 * student's logits. teacherLogits, studentLogits: [rows, vocab].
 *
 * With finite logits every divergence is finite. Accuracy against float64: about 1e-6
 * relative on losses and 1e-5 on gradient entries (see README, "KD numerics").
 */
export function kdLoss(teacherLogits: Float32Array, studentLogits: Float32Array, options: KdLossOptions): KdLossResult {
  const { args, perRow, grad, device } = prepareKd(teacherLogits, studentLogits, options);
  return result(native().kdLoss(...args, false, device), perRow, grad);
}

/** kdLoss() on a worker thread. Do not modify the logits until the promise settles. */
export async function kdLossAsync(
  teacherLogits: Float32Array, studentLogits: Float32Array, options: KdLossOptions,
): Promise<KdLossResult> {
  const caller = new Error();
  const { args, perRow, grad, device } = prepareKd(teacherLogits, studentLogits, options);
  try {
    return result(await native().kdLoss(...args, true, device), perRow, grad);
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

function prepareAcceptance(targetLogits: unknown, draftLogits: unknown, options: unknown) {
  const o = object('options', options);
  knownKeys('options', o, AR_KEYS);
  const rows = dimension('rows', o.rows, 0);
  const vocab = dimension('vocab', o.vocab, 1);
  const target = packParams('target', o.target, rows);
  const args = [
    float32('targetLogits', targetLogits, rows * vocab, '[rows, vocab]'),
    float32('draftLogits', draftLogits, rows * vocab, '[rows, vocab]'),
    rows, vocab, target, o.draft === undefined ? target : packParams('draft', o.draft, rows), new Float32Array(rows),
  ] as const;
  return { args, device: packDevice(o.device) };
}

/**
 * Expected acceptance of speculative decoding per row: sum_x min(p(x), q(x)) for the
 * target's and the draft's sampling distributions (temperature and filters exactly as
 * sample() and verify() use them; equal to verify()'s expectedAcceptance).
 * Without filters it is 1 - TVD(p, q) at that temperature. Logits: [rows, vocab].
 */
export function acceptanceRate(targetLogits: Float32Array, draftLogits: Float32Array, options: AcceptanceRateOptions): Float32Array {
  const { args, device } = prepareAcceptance(targetLogits, draftLogits, options);
  native().acceptanceRate(...args, false, device);
  return args[6];
}

/** acceptanceRate() on a worker thread. Do not modify the logits until the promise settles. */
export async function acceptanceRateAsync(
  targetLogits: Float32Array, draftLogits: Float32Array, options: AcceptanceRateOptions,
): Promise<Float32Array> {
  const caller = new Error();
  const { args, device } = prepareAcceptance(targetLogits, draftLogits, options);
  try {
    await native().acceptanceRate(...args, true, device);
  } catch (err) {
    throw withCallerStack(err, caller);
  }
  return args[6];
}
