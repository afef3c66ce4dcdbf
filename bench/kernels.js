#!/usr/bin/env node
// JS-facing benchmark of verify() and sample() (the public API, argument checks
// included), with benchmark.js. For each (B, gamma, V) it prints logits bytes read per
// second, the ratio to a native pass reading the same bytes on the same threads in
// the same run, and the speedup over the float64 TypeScript reference.
//
//   npm run bench [-- --quick] [-- --threads 2] [-- --json out.json]
//
// The reference is timed on one row (its cost is linear in rows) and scaled to B rows.
import Benchmark from 'benchmark';
import { writeFileSync } from 'node:fs';
import { sample, verify, setThreads, runtimeInfo } from '../dist/index.js';
import { native } from '../dist/native.js';
import { referenceSample, referenceVerify } from '../dist/reference/index.js';

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const value = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const quick = flag('--quick');
setThreads(Number(value('--threads', 2)));
const Bs = quick ? [1, 32] : [1, 8, 32, 128];
const Gs = [4, 8];
const Vs = [32000, 128256];

// A pool of N(0, 1) values (xorshift + Box-Muller), copied into the logits in slices.
const pool = new Float32Array(1 << 22);
{
  let s = 12345;
  const next = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return (s + 0.5) / 4294967296; };
  for (let i = 0; i < pool.length; i++) pool[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
}
function fill(out, scale, seed) {
  let at = (seed * 7919) % (pool.length - 65536);
  for (let i = 0; i < out.length; i += 65536) {
    const n = Math.min(65536, out.length - i);
    out.set(pool.subarray(at, at + n), i);
    at = (at + 104729) % (pool.length - 65536);
  }
  if (scale !== 1) for (let i = 0; i < out.length; i++) out[i] *= scale;
  return out;
}

function time(fn) {
  return new Promise((resolve) => {
    new Benchmark('x', fn, { minSamples: 5, maxTime: quick ? 0.5 : 1.5, onComplete: (e) => resolve(e.target.stats.mean) }).run();
  });
}

const info = runtimeInfo();
console.log(`specula ${info.version} JS benchmark: ${info.threads} threads, ${info.simd} kernels, f32 logits, filters off, T = 1`);
console.log('GB/s = logits bytes / mean time (benchmark.js); baseline = native read of the same bytes, same threads, same run\n');
console.log('| kernel | B | gamma | V | MB | ms | GB/s | baseline GB/s | ratio | TS reference ms | speedup vs reference |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
const records = [];
const b = native();
for (const V of Vs) {
  for (const G of Gs) {
    for (const B of Bs) {
      const target = fill(new Float32Array(B * (G + 1) * V), 3, B + G + V);
      const draft = fill(new Float32Array(B * G * V), 1, B * 3 + G + V * 7);
      for (let r = 0; r < B; r++) {
        const t0 = r * (G + 1) * V, d0 = r * G * V;
        for (let j = 0; j < G * V; j++) draft[d0 + j] += target[t0 + j];
      }
      const params = { temperature: 1 };
      const rowSeeds = Array.from({ length: B * G }, (_, r) => 1000 + Math.floor(r / G));
      const rowOffsets = Array.from({ length: B * G }, (_, r) => r % G);
      const draftTokens = sample(draft, { rows: B * G, vocab: V, params, seeds: rowSeeds, offsets: rowOffsets });
      const seeds = Array.from({ length: B }, (_, r) => 1000 + r);
      const opts = { targetLogits: target, draftLogits: draft, draftTokens, batch: B, gamma: G, vocab: V, target: params, seeds };

      const tBase = await time(() => b.readPass([target, draft]));
      const tVerify = await time(() => verify(opts));
      // Reference on row 0 only, scaled to B rows.
      const one = {
        ...opts, batch: 1, seeds: [1000], draftTokens: draftTokens.subarray(0, G),
        targetLogits: target.subarray(0, (G + 1) * V), draftLogits: draft.subarray(0, G * V),
      };
      let started = process.hrtime.bigint();
      referenceVerify(one);
      const tRefVerify = (Number(process.hrtime.bigint() - started) / 1e9) * B;
      const bytesV = 4 * (target.length + draft.length);
      const rowV = { kernel: 'verify', B, gamma: G, V, bytes: bytesV, seconds: tVerify, baselineSeconds: tBase, referenceSeconds: tRefVerify };

      const tBaseS = await time(() => b.readPass([draft]));
      const tSample = await time(() => sample(draft, { rows: B * G, vocab: V, params, seeds: rowSeeds, offsets: rowOffsets }));
      started = process.hrtime.bigint();
      referenceSample(draft.subarray(0, V), { rows: 1, vocab: V, params, seeds: [1], offsets: [0] });
      const tRefSample = (Number(process.hrtime.bigint() - started) / 1e9) * B * G;
      const rowS = { kernel: 'sample', B: B * G, gamma: 0, V, bytes: 4 * draft.length, seconds: tSample, baselineSeconds: tBaseS, referenceSeconds: tRefSample };

      for (const r of [rowV, rowS]) {
        records.push(r);
        console.log(`| ${r.kernel} | ${r.B} | ${r.gamma} | ${r.V} | ${(r.bytes / 1e6).toFixed(0)} | ${(r.seconds * 1e3).toFixed(3)} | ` +
          `${(r.bytes / r.seconds / 1e9).toFixed(1)} | ${(r.bytes / r.baselineSeconds / 1e9).toFixed(1)} | ` +
          `${(r.baselineSeconds / r.seconds).toFixed(2)} | ${(r.referenceSeconds * 1e3).toFixed(0)} | ${(r.referenceSeconds / r.seconds).toFixed(0)}x |`);
      }
    }
  }
}
const out = value('--json');
if (out) writeFileSync(out, JSON.stringify({ info, records }, null, 2));
