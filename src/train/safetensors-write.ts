/**
 * Writes and reads whole safetensors files of float tensors: the training checkpoints
 * (model.safetensors in f32 / f16 / bf16, optimizer.safetensors in f32).
 */
import { open, readFile, rename } from 'node:fs/promises';
import { SpeculaError } from '../errors.js';
import { toBf16, toF16, type WeightDType } from '../model/init.js';
import { readSafetensors, safetensorsHeader } from '../model/safetensors.js';

export interface TensorData {
  name: string;
  shape: number[];
  data: Float32Array;
}

/**
 * Writes `tensors` to `file` (through file + '.tmp' and a rename, so that an interrupted
 * write never leaves a torn file), in safetensorsHeader's layout.
 */
export async function writeSafetensorsFile(file: string, tensors: TensorData[], dtype: WeightDType,
  metadata: Record<string, string> = { format: 'pt' }): Promise<void> {
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new SpeculaError('E_SHAPE', `${t.name}: shape [${t.shape}] holds ${n} values, data has ${t.data.length}`);
  }
  const { head, order } = safetensorsHeader(tensors, dtype, metadata);
  const ordered = order.map((i) => tensors[i]!);
  const tmp = `${file}.tmp`;
  let fh;
  try {
    fh = await open(tmp, 'w');
  } catch (err) {
    throw new SpeculaError('E_IO', `${file}: cannot be written (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    await fh.write(head);
    for (const t of ordered) {
      let buf: Buffer;
      if (dtype === 'f32') {
        buf = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      } else {
        const u = new Uint16Array(t.data.length);
        const conv = dtype === 'bf16' ? toBf16 : toF16;
        for (let i = 0; i < u.length; ++i) u[i] = conv(t.data[i]!);
        buf = Buffer.from(u.buffer);
      }
      await fh.write(buf);
    }
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

/** Reads every F32 tensor of a safetensors file (E_FORMAT for other dtypes). */
export async function readF32Tensors(file: string): Promise<Map<string, Float32Array>> {
  const header = readSafetensors(file);
  const data = await readFile(file);
  const out = new Map<string, Float32Array>();
  for (const t of header.tensors.values()) {
    if (t.dtype !== 'F32') throw new SpeculaError('E_FORMAT', `${file}: tensor ${t.name} is ${t.dtype}, expected F32`);
    const copy = new Float32Array(t.bytes / 4);
    Buffer.from(copy.buffer).set(data.subarray(t.offset, t.offset + t.bytes));
    out.set(t.name, copy);
  }
  return out;
}
