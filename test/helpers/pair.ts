// Model pairs for the engine tests: a tiny random target, a draft close to it (its
// weights mixed 95/5 with those of a model of another seed, so that acceptance is
// 0.4-0.8) and an independent draft (another seed: acceptance near 0).
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { initModel, readSafetensors, type PresetName } from '../../src/index.js';

export interface Pair {
  target: string;
  close: string;
  independent: string;
}

export async function makePair(root: string, preset: PresetName = 'tiny', initStd = 0.7, mix = 0.05): Promise<Pair> {
  const target = path.join(root, `${preset}-target`);
  const close = path.join(root, `${preset}-close`);
  const independent = path.join(root, `${preset}-independent`);
  await initModel(target, { config: preset, seed: 1, initStd });
  await initModel(close, { config: preset, seed: 2, initStd });
  await initModel(independent, { config: preset, seed: 3, initStd });
  // Same config and dtype: the two files have the same header, so the data align.
  const file = (d: string) => path.join(d, 'model.safetensors');
  const a = new Uint8Array(readFileSync(file(target))), b = new Uint8Array(readFileSync(file(close)));
  const start = Math.min(...[...readSafetensors(file(target)).tensors.values()].map((t) => t.offset));
  const fa = new Float32Array(a.buffer, a.byteOffset + start, (a.length - start) / 4);
  const fb = new Float32Array(b.buffer, b.byteOffset + start, (b.length - start) / 4);
  for (let i = 0; i < fb.length; i++) fb[i] = (1 - mix) * fa[i]! + mix * fb[i]!;
  writeFileSync(file(close), b);
  return { target, close, independent };
}
