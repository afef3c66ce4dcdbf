/**
 * Argument checks for the public API. Hand-written rather than a schema library: the
 * kernel functions are called once per generated token, and these checks cost well
 * under a microsecond per row. Every failure is a SpeculaError naming the argument,
 * what was expected and what was received.
 */
import { SpeculaError, type ErrorCode } from './errors.js';
import type { PackedParams } from './native.js';

export type SamplingParams = {
  /** 0 = greedy (argmax, lowest index on ties). Must be finite and >= 0. */
  temperature: number;
  /** Keep the k most probable tokens (integer >= 1). Omit for no limit. */
  topK?: number;
  /** Keep the shortest most-probable prefix with mass >= topP, in (0, 1]. 1 = off. */
  topP?: number;
  /** Keep tokens with p >= minP * max p, in [0, 1). 0 = off. */
  minP?: number;
};

/** One value for all rows, or one per row. */
export type PerRow<T> = T | T[];

export function describe(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (v === null) return 'null';
  if (typeof v === 'number') return `${v}`;
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'boolean' || typeof v === 'symbol') return String(v);
  if (typeof v === 'function') return 'a function';
  if (Array.isArray(v)) return `an Array of length ${v.length}`;
  if (ArrayBuffer.isView(v)) {
    const n = (v as unknown as { length?: number }).length;
    return `a ${v.constructor.name}${n === undefined ? '' : ` of length ${n}`}`;
  }
  return 'an object';
}

export function fail(code: ErrorCode, name: string, expected: string, received: unknown): never {
  throw new SpeculaError(code, `${name}: expected ${expected}, received ${describe(received)}`);
}

export function isIntegerIn(v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
}

export function object(name: string, v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('E_ARG', name, 'an object', v);
  return v as Record<string, unknown>;
}

/** A dimension (rows, vocab, batch, gamma): an integer >= min. */
export function dimension(name: string, v: unknown, min: number): number {
  if (typeof v !== 'number') fail('E_ARG', name, `an integer >= ${min}`, v);
  if (!isIntegerIn(v, min, 2 ** 31 - 1)) fail('E_VALUE', name, `an integer in [${min}, 2147483647]`, v);
  return v;
}

export function float32(name: string, v: unknown, length: number, what: string): Float32Array {
  if (!(v instanceof Float32Array)) fail('E_ARG', name, `a Float32Array ${what}`, v);
  if (v.length !== length) fail('E_SHAPE', name, `a Float32Array of length ${what} = ${length}`, v);
  return v;
}

export function int32(name: string, v: unknown, length: number, what: string): Int32Array {
  if (!(v instanceof Int32Array)) fail('E_ARG', name, `an Int32Array ${what}`, v);
  if (v.length !== length) fail('E_SHAPE', name, `an Int32Array of length ${what} = ${length}`, v);
  return v;
}

/** Rejects keys that are not in `allowed` (a misspelt option must not be ignored). */
export function knownKeys(name: string, v: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(v)) {
    if (!allowed.includes(key)) {
      throw new SpeculaError('E_ARG', `${name}.${key}: unknown option (expected one of ${allowed.join(', ')})`);
    }
  }
}

const PARAM_KEYS = ['temperature', 'topK', 'topP', 'minP'] as const;

function packOne(name: string, v: unknown, out: Float64Array, at: number): void {
  const p = object(name, v);
  knownKeys(name, p, PARAM_KEYS);
  const { temperature, topK, topP, minP } = p;
  if (typeof temperature !== 'number') fail('E_ARG', `${name}.temperature`, 'a number', temperature);
  if (!Number.isFinite(temperature) || temperature < 0) fail('E_VALUE', `${name}.temperature`, 'a finite number >= 0', temperature);
  if (topK !== undefined && !isIntegerIn(topK, 1)) {
    fail(typeof topK === 'number' ? 'E_VALUE' : 'E_ARG', `${name}.topK`, 'an integer >= 1', topK);
  }
  if (topP !== undefined && !(typeof topP === 'number' && topP > 0 && topP <= 1)) {
    fail(typeof topP === 'number' ? 'E_VALUE' : 'E_ARG', `${name}.topP`, 'a number in (0, 1]', topP);
  }
  if (minP !== undefined && !(typeof minP === 'number' && minP >= 0 && minP < 1)) {
    fail(typeof minP === 'number' ? 'E_VALUE' : 'E_ARG', `${name}.minP`, 'a number in [0, 1)', minP);
  }
  out[4 * at] = temperature;
  // top-k beyond int32 keeps every token of any vocabulary: the same as off.
  out[4 * at + 1] = topK === undefined || topK > 2 ** 31 - 1 ? 0 : topK;
  out[4 * at + 2] = topP ?? 1;
  out[4 * at + 3] = minP ?? 0;
}

/** PerRow<SamplingParams> -> the packed Float64Array of the addon (1 or `rows` entries). */
export function packParams(name: string, v: unknown, rows: number): PackedParams {
  if (Array.isArray(v)) {
    if (v.length !== rows) fail('E_SHAPE', name, `one SamplingParams or an Array of ${rows} (one per row)`, v);
    const out = new Float64Array(4 * rows);
    for (let r = 0; r < rows; r++) packOne(`${name}[${r}]`, v[r], out, r);
    return out;
  }
  const out = new Float64Array(4);
  packOne(name, v, out, 0);
  return out;
}

/** Reads back one entry of packed params (the TypeScript reference uses this). */
export function unpackParams(packed: PackedParams, row: number): Required<SamplingParams> {
  const r = packed.length === 4 ? 0 : row;
  return {
    temperature: packed[4 * r]!,
    topK: packed[4 * r + 1]!,
    topP: packed[4 * r + 2]!,
    minP: packed[4 * r + 3]!,
  };
}

const U64 = 2n ** 64n;

/** One seed per row: non-negative safe integers or bigints below 2^64. */
export function packSeeds(v: unknown, rows: number): BigUint64Array {
  if (v instanceof BigUint64Array) {
    if (v.length !== rows) fail('E_SHAPE', 'seeds', `${rows} seeds (one per row)`, v);
    return v;
  }
  if (!Array.isArray(v) && !ArrayBuffer.isView(v)) fail('E_ARG', 'seeds', `an Array of ${rows} seeds (number or bigint)`, v);
  const list = v as ArrayLike<unknown>;
  if (list.length !== rows) fail('E_SHAPE', 'seeds', `${rows} seeds (one per row)`, v);
  const out = new BigUint64Array(rows);
  for (let r = 0; r < rows; r++) {
    const s = list[r];
    if (typeof s === 'number') {
      if (!isIntegerIn(s, 0)) fail('E_VALUE', `seeds[${r}]`, 'a non-negative safe integer or a bigint in [0, 2^64)', s);
      out[r] = BigInt(s);
    } else if (typeof s === 'bigint') {
      if (s < 0n || s >= U64) fail('E_VALUE', `seeds[${r}]`, 'a bigint in [0, 2^64)', s);
      out[r] = s;
    } else {
      fail('E_ARG', `seeds[${r}]`, 'a number or a bigint', s);
    }
  }
  return out;
}

/** Optional position counters, one per row: non-negative safe integers. */
export function packOffsets(v: unknown, rows: number): Float64Array | null {
  if (v === undefined) return null;
  if (!Array.isArray(v) && !ArrayBuffer.isView(v)) fail('E_ARG', 'offsets', `an Array of ${rows} non-negative integers`, v);
  const list = v as ArrayLike<unknown>;
  if (list.length !== rows) fail('E_SHAPE', 'offsets', `${rows} offsets (one per row)`, v);
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = list[r];
    if (!isIntegerIn(o, 0)) fail(typeof o === 'number' ? 'E_VALUE' : 'E_ARG', `offsets[${r}]`, 'a non-negative safe integer', o);
    out[r] = o;
  }
  return out;
}

/** Where a kernel runs: the CPU, the CUDA backend, or CUDA when it is available and the input is large enough to pay for the copies (the default). */
export type Device = 'cpu' | 'cuda' | 'auto';
const DEVICES: readonly Device[] = ['cpu', 'cuda', 'auto'];

/** The `device` option as the addon's code (0 cpu, 1 cuda, 2 auto); undefined is 'auto'. */
export function packDevice(v: unknown): 0 | 1 | 2 {
  if (v === undefined) return 2;
  const i = DEVICES.indexOf(v as Device);
  if (i < 0) fail(typeof v === 'string' ? 'E_VALUE' : 'E_ARG', 'device', "'cpu', 'cuda' or 'auto'", v);
  return i as 0 | 1 | 2;
}
