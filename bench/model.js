#!/usr/bin/env node
// Model-runtime benchmark through the public API, on the ~100M-parameter `llama-100m`
// preset written by initModel (f32 and bf16), against ceilings measured in the same run:
//   decode        1 sequence, 1 new token per call at context 512: tokens/s and the share
//                 of the bandwidth bound (weight bytes per token / native read bandwidth)
//   verification  8 sequences x 5 new tokens (all logits) at context 512: time / decode
//   prefill       1 x 512 tokens: GFLOP/s and the share of the FMA peak (native FMA loop)
//   memory        resident-memory growth from load (with the caches) vs weights + KV
//
//   npm run bench:model [-- --quick] [-- --dtype f32|bf16] [-- --threads N] [-- --dir DIR]
// Model directories are cached under DIR (default: the OS temp dir) and reused.
import { existsSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initModel, loadModel, runtimeInfo, setThreads } from '../dist/index.js';
import { native } from '../dist/native.js';
import { flag, opt } from './args.js';

const quick = flag('--quick');
const threads = Number(opt('--threads', '2'));
const dtypes = opt('--dtype', 'f32,bf16').split(',');
const root = opt('--dir', os.tmpdir());
setThreads(threads);
const b = native();
const ctx = 512;

const median = (xs) => [...xs].sort((a, c) => a - c)[xs.length >> 1];
const now = () => performance.now() / 1e3;

function rssFromProc() {
  // VmRSS counts mapped file pages too (what "resident" means here).
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

const info = runtimeInfo();
console.log(`specula ${info.version} model benchmark: llama-100m, ${info.threads} threads, ${info.simd} kernels${info.amx ? ` (bf16 products on AMX, ${info.amxPieces} pieces)` : ""}, context ${ctx}`);
for (const dtype of dtypes) {
  const dir = path.join(root, `specula-bench-llama-100m-${dtype}`);
  if (!existsSync(path.join(dir, 'model.safetensors'))) {
    const t = now();
    await initModel(dir, { config: 'llama-100m', seed: 1, dtype });
    console.log(`initModel wrote ${dir} in ${(now() - t).toFixed(1)} s`);
  }
  const fileBytes = statSync(path.join(dir, 'model.safetensors')).size;
  const rss0 = rssFromProc();
  const tl = now();
  const model = await loadModel(dir, { contextLength: 1024 });
  const loadS = now() - tl;
  const big = model.createCache({ sequences: 8, capacity: ctx + 8 });
  const one = model.createCache({ sequences: 1, capacity: ctx + 8 });
  const rss1 = rssFromProc();
  const kvBytes = big.bytes + one.bytes;
  const wb = model.weightBytesPerToken;
  const params = wb / (dtype === 'f32' ? 4 : 2);
  const V = model.vocabSize;
  const prompt = Int32Array.from({ length: ctx }, (_, i) => (i * 7919 + 13) % V);

  // Every ratio is taken per round, between a measurement and its ceiling measured right
  // next to it (the machine is shared: bandwidth and clock drift by 10-20% over seconds),
  // and the median over rounds is reported.
  const H = model.config.hiddenSize, L = model.config.numLayers, hd = model.config.headDim, nh = model.config.numHeads;
  const flops = 2 * params * ctx - 2 * V * H * (ctx - 1) + 4 * L * nh * hd * ((ctx * (ctx + 1)) / 2);
  const rounds = quick ? 3 : 7;
  const readBuf = new Float32Array(Math.ceil(wb / 4));
  for (let i = 0; i < readBuf.length; i += 1024) readBuf[i] = 1;
  const readOnce = () => {
    const t = now();
    b.readPass([readBuf]);
    return (readBuf.length * 4) / (now() - t);
  };
  const peakOnce = () => {
    const t = now();
    const fl = b.fmaPeak(5_000_000);
    return fl / (now() - t);
  };

  // Prefill: 1 x 512, last logits, against the FMA peak.
  const pre = [], preRatio = [], peaks = [];
  for (let r = 0; r < rounds; r++) {
    const pk = Math.max(peakOnce(), peakOnce());
    one.reset();
    const t = now();
    await one.forward([{ seq: 0, tokens: prompt, logits: 'last' }]);
    const s = now() - t;
    pre.push(s);
    peaks.push(pk);
    preRatio.push(flops / s / pk);
  }

  // Decode at context 512 (rolled back after each token) against the read bandwidth: a
  // read pass, then 10 consecutive decode steps, the median of the last 8 (the read pass
  // evicts the caches like any other work would). Verification 8 x 5 against decode steps
  // of the same round: 6 decode steps (median of the last 4), then 2 verification calls.
  for (let s = 0; s < 8; s++) await big.forward([{ seq: s, tokens: prompt, logits: 'none' }]);
  const out1 = new Float32Array(V);
  const out40 = new Float32Array(40 * V);
  const decodeSteps = async (n, skip, r) => {
    const steps = [];
    for (let i = 0; i < n; i++) {
      const t = now();
      await big.forward([{ seq: 0, tokens: [((r * 16 + i) * 31) % V], logits: 'last' }], { out: out1 });
      steps.push(now() - t);
      big.truncate(0, ctx);
    }
    return median(steps.slice(skip));
  };
  const dec = [], decRatio = [], ver = [], verRatio = [], bws = [];
  for (let r = 0; r < rounds * 2; r++) {
    const bw = Math.max(readOnce(), readOnce());
    const d = await decodeSteps(10, 2, r);
    dec.push(d);
    bws.push(bw);
    decRatio.push(wb / bw / d);
  }
  for (let r = 0; r < rounds * 2; r++) {
    const d = await decodeSteps(6, 2, r);
    const vs = [];
    for (let i = 0; i < 2; i++) {
      const items = Array.from({ length: 8 }, (_, q) => ({
        seq: q, tokens: Int32Array.from({ length: 5 }, (_, j) => ((q * 5 + j + r * 2 + i) * 104729) % V), logits: 'all',
      }));
      const t = now();
      await big.forward(items, { out: out40 });
      vs.push(now() - t);
      for (let q = 0; q < 8; q++) big.truncate(q, ctx);
    }
    const v = median(vs);
    ver.push(v);
    verRatio.push(v / d);
  }
  const decode = median(dec), verify = median(ver), prefill = median(pre), bw = median(bws), peak = median(peaks);
  const bound = wb / bw;
  const f = (x, d = 2) => x.toFixed(d);
  console.log(`\n${dtype}: ${f(params / 1e6, 1)} M parameters, ${f(wb / 1e6, 0)} MB weights per token, loaded in ${f(loadS, 2)} s`);
  console.log(`  ceilings      read ${f(bw / 1e9, 1)} GB/s, FMA peak ${f(peak / 1e9, 0)} GFLOP/s (medians over the rounds)`);
  console.log(`  decode        ${f(1 / decode, 1)} tokens/s, ${f(decode * 1e3)} ms/token; bandwidth bound ${f(bound * 1e3)} ms: ${f(median(decRatio))} of it (goal >= 0.80)`);
  console.log(`  verification  8 x 5 tokens ${f(verify * 1e3)} ms = ${f(median(verRatio))} x decode (goal <= 3)`);
  console.log(`  prefill       1 x 512 in ${f(prefill * 1e3, 1)} ms, ${f(flops / prefill / 1e9, 1)} GFLOP/s: ${f(median(preRatio))} of FMA peak (goal >= 0.50)`);
  console.log(`  memory        resident +${f((rss1 - rss0) / 1e6, 0)} MB after load = ${f((rss1 - rss0) / (fileBytes + kvBytes))} x (weights ${f(fileBytes / 1e6, 0)} MB + KV ${f(kvBytes / 1e6, 0)} MB) (goal <= 1.10)`);
  big.dispose();
  one.dispose();
  model.dispose();
}
