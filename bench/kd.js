#!/usr/bin/env node
// JS-facing benchmark of kdLoss() (the public API) with benchmark.js: rows in {256, 4096},
// V in {32000, 128256}, each divergence, loss only and with gradient, T = 1, student =
// teacher + N(0, 1). Prints teacher + student bytes per second, the ratio to a native
// read of the same bytes on the same threads in the same run, and the speedup over the
// float64 TypeScript reference (timed on one row, scaled to the row count).
//
//   npm run bench:kd [-- --quick] [-- --threads 2]
import Benchmark from 'benchmark';
import { kdLoss, setThreads, runtimeInfo } from '../dist/index.js';
import { native } from '../dist/native.js';
import { referenceKdLoss } from '../dist/reference/index.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const ti = args.indexOf('--threads');
setThreads(ti >= 0 ? Number(args[ti + 1]) : 2);

const pool = new Float32Array(1 << 22);
{
  let s = 2024;
  const next = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return (s + 0.5) / 4294967296; };
  for (let i = 0; i < pool.length; i++) pool[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
}
function fill(out, seed) {
  let at = (seed * 7919) % (pool.length - 65536);
  for (let i = 0; i < out.length; i += 65536) {
    const n = Math.min(65536, out.length - i);
    out.set(pool.subarray(at, at + n), i);
    at = (at + 104729) % (pool.length - 65536);
  }
  return out;
}
function time(fn, big) {
  return new Promise((resolve) => {
    new Benchmark('x', fn, {
      minSamples: big ? 2 : 5, maxTime: quick || big ? 0.3 : 1, initCount: 1,
      onComplete: (e) => resolve(e.target.stats.mean),
    }).run();
  });
}

const info = runtimeInfo();
console.log(`specula ${info.version} KD benchmark (JS API): ${info.threads} threads, ${info.simd} kernels, T = 1, student = teacher + N(0, 1)`);
console.log('GB/s = teacher + student bytes / mean time; baseline = native read of the same bytes, same threads, same run\n');
console.log('| divergence | rows | V | loss GB/s | ratio | +grad GB/s | ratio | baseline GB/s | TS reference ms | speedup (loss) |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
const b = native();
for (const V of [32000, 128256]) {
  for (const rows of quick ? [256] : [256, 4096]) {
    const teacher = fill(new Float32Array(rows * V), rows + V);
    const student = fill(new Float32Array(rows * V), rows * 3 + V * 7);
    for (let i = 0; i < teacher.length; i++) {
      teacher[i] *= 3;
      student[i] += teacher[i];
    }
    const bytes = 8 * rows * V;
    const gradOut = new Float32Array(rows * V);  // reused, as a training loop would
    const big = bytes > 1e9;
    for (const divergence of ['fkl', 'rkl', 'jsd', 'tvd']) {
      const opts = { rows, vocab: V, divergence };
      const tBase = await time(() => b.readPass([teacher, student]), big);
      const tLoss = await time(() => kdLoss(teacher, student, opts), big);
      const tGrad = await time(() => kdLoss(teacher, student, { ...opts, gradOut }), big);
      const started = process.hrtime.bigint();
      referenceKdLoss(teacher.subarray(0, V), student.subarray(0, V), { ...opts, rows: 1 });
      const tRef = (Number(process.hrtime.bigint() - started) / 1e9) * rows;
      const gbs = (t) => (bytes / t / 1e9).toFixed(1);
      console.log(`| ${divergence} | ${rows} | ${V} | ${gbs(tLoss)} | ${(tBase / tLoss).toFixed(2)} | ${gbs(tGrad)} | ` +
        `${(tBase / tGrad).toFixed(2)} | ${gbs(tBase)} | ${(tRef * 1e3).toFixed(0)} | ${(tRef / tLoss).toFixed(0)}x |`);
    }
  }
}
