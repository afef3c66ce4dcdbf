#!/usr/bin/env node
// Training benchmark through the public API: one optimizer step (forward, cross-entropy,
// backward, AdamW) of the bundled target's shape and of a draft's, against the FMA peak
// measured in the same run on the same threads:
//   tokens/s             batch x seqLen tokens per step / step time (median of the timed steps)
//   step GFLOP/s         Trainer.flops (matmuls and attention as computed) / step time, and its share of the peak
//   matmul GFLOP/s       the matmuls' flops / their wall time inside the step, and its share of the peak
//
//   npm run bench:train [-- --quick] [-- --threads N] [-- --batch B] [-- --seq-len S]
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initModel, loadModel, runtimeInfo, setThreads, Trainer } from '../dist/index.js';
import { native } from '../dist/native.js';
import { flag, opt } from './args.js';

const quick = flag('--quick');
const threads = Number(opt('--threads', '2'));
const B = Number(opt('--batch', '16'));
const S = Number(opt('--seq-len', '256'));
setThreads(threads);

const SHAPES = {
  'target (bundled, ~3.0M)': { vocabSize: 258, hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 8, numKvHeads: 4, headDim: 32,
    tieWordEmbeddings: true, maxPositionEmbeddings: 512 },
  'draft (bundled, ~0.22M)': { vocabSize: 258, hiddenSize: 96, intermediateSize: 256, numLayers: 2, numHeads: 3, numKvHeads: 1, headDim: 32,
    tieWordEmbeddings: true, maxPositionEmbeddings: 512 },
};

function fmaPeak() {
  const b = native();
  const iters = 4e6;
  b.fmaPeak(iters / 10);
  let best = 0;
  for (let i = 0; i < 3; ++i) {
    const t = performance.now();
    const flops = b.fmaPeak(iters);
    best = Math.max(best, flops / ((performance.now() - t) / 1e3));
  }
  return best;
}

const median = (xs) => [...xs].sort((a, c) => a - c)[xs.length >> 1];
const info = runtimeInfo();
console.log(`specula ${info.version} training benchmark: ${info.threads} threads, ${info.simd} kernels, batch ${B} x seq ${S}`);
const root = mkdtempSync(path.join(os.tmpdir(), 'specula-bench-train-'));
try {
  const peak = fmaPeak();
  console.log(`FMA peak (same run): ${(peak / 1e9).toFixed(1)} GFLOP/s`);
  console.log('| model | params | tokens/s | step ms (fwd / bwd) | step GFLOP/s | share of peak | matmul GFLOP/s | share of peak |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const [name, shape] of Object.entries(SHAPES)) {
    const dir = path.join(root, name.split(' ')[0]);
    await initModel(dir, { config: shape, seed: 1 });
    const model = await loadModel(dir);
    const trainer = new Trainer(model);
    const T = B * S;
    const tokens = Int32Array.from({ length: T }, (_, i) => (i * 131 + 7) % 256);
    const targets = Int32Array.from({ length: T }, (_, i) => (i * 71 + 3) % 256);
    const logits = new Float32Array(T * model.vocabSize), d = new Float32Array(logits.length);
    const steps = quick ? 3 : 8;
    const times = [], fwd = [], bwd = [], mmRate = [];
    for (let s = 0; s < steps + 1; ++s) {
      const t0 = performance.now();
      await trainer.forward(tokens, B, S, logits);
      d.fill(0);
      await trainer.crossEntropy(logits, targets, d);
      await trainer.backward(d);
      await trainer.adamw({ lr: 1e-4, maxGradNorm: 1 });
      const ms = performance.now() - t0;
      if (s === 0) continue;  // warm-up: first-touch of the activations
      const tm = trainer.timing();
      times.push(ms);
      fwd.push(tm.forwardMs);
      bwd.push(tm.backwardMs);
      mmRate.push(tm.matmulFlops / (tm.matmulMs / 1e3));
    }
    const ms = median(times);
    const rate = trainer.flops(B, S) / (ms / 1e3);
    const mm = median(mmRate);
    console.log(`| ${name} | ${(trainer.parameters / 1e6).toFixed(2)}M | ${(T / (ms / 1e3)).toFixed(0)} | ${ms.toFixed(0)} (${median(fwd).toFixed(0)} / ${median(bwd).toFixed(0)}) | ` +
      `${(rate / 1e9).toFixed(1)} | ${(rate / peak).toFixed(2)} | ${(mm / 1e9).toFixed(1)} | ${(mm / peak).toFixed(2)} |`);
    trainer.dispose();
    model.dispose();
  }
  console.log('goals: whole step >= 0.25 of the FMA peak, matmuls >= 0.40');
} finally {
  rmSync(root, { recursive: true, force: true });
}
