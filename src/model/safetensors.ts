/**
 * safetensors headers: read and validated here, before any byte of tensor data is
 * touched; the data itself is memory-mapped by the native core. Every failure is a
 * SpeculaError naming the file and, where it applies, the tensor.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   { "name": { "dtype": "F32", "shape": [..], "data_offsets": [begin, end] }, "__metadata__": {..} }
 * then the data; offsets are relative to the end of the header.
 */
import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { SpeculaError } from '../errors.js';

export type DType = 'F32' | 'F16' | 'BF16';
export const DTYPE_BYTES: Record<string, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, U16: 2, U32: 4, U64: 8, BOOL: 1,
  F8_E4M3: 1, F8_E5M2: 1,
};
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  file: string;
  /** Any safetensors dtype; the runtime accepts F32, F16 and BF16 for the tensors it uses. */
  dtype: string;
  shape: number[];
  /** Absolute byte offset of the data in the file, and its length. */
  offset: number;
  bytes: number;
}

export interface SafetensorsFile {
  file: string;
  size: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

function fail(code: 'E_FORMAT' | 'E_IO', file: string, what: string): never {
  throw new SpeculaError(code, `${file}: ${what}`);
}

/** Parses and validates a header given the file's first bytes and its size (used by readSafetensors and the fuzz test). */
export function parseSafetensorsHeader(file: string, head: Uint8Array, size: number): SafetensorsFile {
  if (size < 8) fail('E_FORMAT', file, `expected at least 8 bytes (the header length), found ${size}`);
  const n = new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) fail('E_FORMAT', file, `header length ${n} exceeds the 100 MB limit`);
  const headerLen = Number(n);
  if (8 + headerLen > size) fail('E_FORMAT', file, `header length ${headerLen} runs past the end of the file (${size} bytes)`);
  if (head.length < 8 + headerLen) fail('E_FORMAT', file, 'header truncated');
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(head.subarray(8, 8 + headerLen)));
  } catch (err) {
    fail('E_FORMAT', file, `header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail('E_FORMAT', file, 'header is not a JSON object');
  const dataStart = 8 + headerLen;
  const dataSize = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('E_FORMAT', file, '__metadata__ is not an object');
      metadata = raw as Record<string, string>;
      continue;
    }
    const where = `tensor ${JSON.stringify(name)}`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('E_FORMAT', file, `${where}: expected an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) fail('E_FORMAT', file, `${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail('E_FORMAT', file, `${where}: shape must be an array of non-negative integers, found ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      fail('E_FORMAT', file, `${where}: data_offsets must be [begin, end], found ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataSize) {
      fail('E_FORMAT', file, `${where}: data_offsets [${begin}, ${end}] outside the ${dataSize} data bytes`);
    }
    let numel = 1;
    for (const d of shape as number[]) numel *= d;
    const bytes = numel * DTYPE_BYTES[dtype]!;
    if (!Number.isSafeInteger(bytes) || end - begin !== bytes) {
      fail('E_FORMAT', file, `${where}: ${dtype} ${JSON.stringify(shape)} needs ${bytes} bytes, data_offsets give ${end - begin}`);
    }
    tensors.set(name, { name, file, dtype, shape: shape as number[], offset: dataStart + begin, bytes });
    spans.push([begin, end, name]);
  }
  // Non-empty tensors may not share a byte: sorted by start, each must begin at or after
  // the furthest end so far.
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let furthest = -1, owner = '';
  for (const [b, e, n] of spans) {
    if (e === b) continue;
    if (b < furthest) fail('E_FORMAT', file, `tensors ${JSON.stringify(owner)} and ${JSON.stringify(n)} overlap`);
    if (e > furthest) [furthest, owner] = [e, n];
  }
  return { file, size, tensors, metadata };
}

/** Reads and validates the header of a .safetensors file (the data is not read). */
export function readSafetensors(file: string): SafetensorsFile {
  // stat before open: opening a FIFO would block, a directory would fail later.
  let st;
  try {
    st = statSync(file);
  } catch (err) {
    fail('E_IO', file, `cannot open (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (!st.isFile()) fail('E_IO', file, 'not a regular file');
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    fail('E_IO', file, `cannot open (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) fail('E_IO', file, 'not a regular file');
    const size = stat.size;
    const first = Buffer.alloc(Math.min(8, size));
    readSync(fd, first, 0, first.length, 0);
    if (size < 8) return parseSafetensorsHeader(file, first, size);
    const n = first.readBigUInt64LE(0);
    const want = n > BigInt(MAX_HEADER_BYTES) || 8n + n > BigInt(size) ? 8 : 8 + Number(n);
    const head = Buffer.alloc(want);
    readSync(fd, head, 0, want, 0);
    return parseSafetensorsHeader(file, head, size);
  } finally {
    closeSync(fd);
  }
}

const ST_DTYPE = { f32: 'F32', f16: 'F16', bf16: 'BF16' } as const;

/**
 * The header of a safetensors file of `tensors` stored as `dtype`, padded to 64 bytes, and
 * the order their data follow: tensors whose size is a multiple of 64 bytes first, so that
 * they all start on a cache line (aligned vector loads). initModel and the training checkpoints use it.
 */
export function safetensorsHeader(tensors: readonly { name: string; shape: readonly number[] }[], dtype: 'f32' | 'f16' | 'bf16',
  metadata: Record<string, string> = { format: 'pt' }): { head: Buffer; order: number[] } {
  const es = dtype === 'f32' ? 4 : 2;
  const bytesOf = (i: number) => tensors[i]!.shape.reduce((a, b) => a * b, 1) * es;
  const idx = tensors.map((_, i) => i);
  const order = [...idx.filter((i) => bytesOf(i) % 64 === 0), ...idx.filter((i) => bytesOf(i) % 64 !== 0)];
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const i of order) {
    header[tensors[i]!.name] = { dtype: ST_DTYPE[dtype], shape: tensors[i]!.shape, data_offsets: [off, off + bytesOf(i)] };
    off += bytesOf(i);
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((64 - ((8 + Buffer.byteLength(json)) % 64)) % 64);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, 'utf8');
  return { head, order };
}
