#!/usr/bin/env node
// Runs the native tests, a small verify() and a tiny model's logits through the addon
// under qemu-user emulating older x86-64 CPUs (Nehalem: no AVX; Haswell: AVX2, F16C, no
// AVX-512), to show that the run-time dispatch never executes an instruction the CPU
// lacks, that every level gives the same tokens, and that AVX2 gives the same logits as
// AVX-512 bit for bit (the portable level, without fused multiply-adds, within 1e-5).
// Needs qemu-x86_64 (Debian: qemu-user) and a prior `npm run test:native` and `npm ci`.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const modelDir = mkdtempSync(path.join(os.tmpdir(), 'specula-oldcpu-'));
process.on('exit', () => rmSync(modelDir, { recursive: true, force: true }));
{
  const r = spawnSync(process.execPath, ['--input-type=module', '-e',
    `import { initModel } from './dist/index.js'; await initModel(${JSON.stringify(modelDir)}, { config: 'qwen2-tiny', seed: 3, dtype: 'f16', initStd: 0.15 });`],
  { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`initModel failed:\n${r.stderr}`);
}
const modelSmoke = `
import { loadModel, runtimeInfo } from './dist/index.js';
const m = await loadModel(${JSON.stringify(modelDir)});
const l = await m.logits([256, 72, 101, 108, 108, 111, 33]);
let h = 2166136261;
for (const b of new Uint8Array(l.buffer)) h = Math.imul(h ^ b, 16777619) >>> 0;
console.log(runtimeInfo().simd, h.toString(16), Array.from(l.subarray(0, 8), (v) => v.toFixed(6)).join(','));`;
const smoke = `
import { sample, verify, runtimeInfo } from './dist/index.js';
const V = 1000, B = 4, G = 3;
const t = Float32Array.from({ length: B * (G + 1) * V }, (_, i) => Math.sin(i * 0.37) * 3);
const d = Float32Array.from({ length: B * G * V }, (_, i) => Math.sin(i * 0.37) * 3 + Math.cos(i));
const draftTokens = sample(d, { rows: B * G, vocab: V, params: { temperature: 1 }, seeds: Array(B * G).fill(1) });
const r = verify({ targetLogits: t, draftLogits: d, draftTokens, batch: B, gamma: G, vocab: V,
  target: { temperature: 1, topP: 0.9 }, seeds: [1, 2, 3, 4] });
console.log(runtimeInfo().simd, Array.from(r.tokens).join(','));`;

// out: the last line of stdout (qemu prints feature warnings on stderr); err: stderr.
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', timeout: 600_000, env: { ...process.env, SPECULA_QUICK: '1' } });
  const lines = (r.stdout ?? '').trim().split('\n');
  return { ok: r.status === 0, out: lines[lines.length - 1] ?? '', all: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

const reference = run(process.execPath, ['--input-type=module', '-e', smoke]);
if (!reference.ok) throw new Error(`smoke run failed natively:\n${reference.out}`);
const want = reference.out.split(' ')[1];
const modelReference = run(process.execPath, ['--input-type=module', '-e', modelSmoke]);
if (!modelReference.ok) throw new Error(`model smoke run failed natively:\n${modelReference.all}`);
let failed = false;
const count = { passed: 0, failed: 0 };
const tally = (ok) => { count[ok ? 'passed' : 'failed'] += 1; return ok; };
for (const [cpu, level] of [['Nehalem', 'portable'], ['Haswell', 'avx2']]) {
  for (const t of ['test_philox', 'test_simd', 'test_sampling', 'test_kd', 'test_model', 'test_thread_pool']) {
    const r = run('qemu-x86_64', ['-cpu', cpu, path.join(root, 'build-native', t)]);
    console.log(`${cpu}: ${t} ${r.ok ? 'passed' : `FAILED\n${r.all}`}`);
    failed ||= !tally(r.ok);
  }
  const r = run('qemu-x86_64', ['-cpu', cpu, process.execPath, '--input-type=module', '-e', smoke]);
  const [got, tokens] = r.out.split(' ');
  const ok = r.ok && got === level && tokens === want;
  console.log(`${cpu}: addon chose ${got}, tokens ${tokens === want ? 'equal to' : 'DIFFERENT from'} the ${reference.out.split(' ')[0]} run`);
  if (!ok) console.log(r.all);
  failed ||= !tally(ok);
  const m = run('qemu-x86_64', ['-cpu', cpu, process.execPath, '--input-type=module', '-e', modelSmoke]);
  const [mlevel, hash, head] = m.out.split(' ');
  const [, wantHash, wantHead] = modelReference.out.split(' ');
  const close = (head ?? '').split(',').every((v, i) => Math.abs(Number(v) - Number(wantHead.split(',')[i])) <= 1e-5);
  const mok = m.ok && mlevel === level && (level === 'avx2' ? hash === wantHash : close);
  console.log(`${cpu}: model logits ${hash === wantHash ? 'bitwise equal to' : close ? 'within 1e-5 of' : 'DIFFERENT from'} the ${modelReference.out.split(' ')[0]} run`);
  if (!mok) console.log(m.all);
  failed ||= !tally(mok);
}
// A closing line in the form CI summaries read: every check above, counted.
console.log(`old-cpus: ${count.passed} passed, ${count.failed} failed`);
process.exit(failed ? 1 : 0);
