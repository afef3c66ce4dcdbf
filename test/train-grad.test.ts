// The native backward pass against central finite differences of the float64 reference
// forward (src/reference/model.ts), for every parameter tensor; cross-entropy and AdamW
// against float64 recomputations; thread invariance of a whole step.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { getThreads, initModel, loadModel, setThreads, Trainer } from '../src/index.js';
import { loadReferenceModel, referenceLogits, type ReferenceModel } from '../src/reference/index.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'specula-train-grad-'));
const threadsBefore = getThreads();
afterAll(() => {
  setThreads(threadsBefore);
  rmSync(root, { recursive: true, force: true });
});

/** A deterministic pseudo-random stream in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CONFIGS = {
  // GQA (4 query heads on 2 kv heads), untied LM head.
  gqa: { vocabSize: 260, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 4,
    tieWordEmbeddings: false, maxPositionEmbeddings: 64 },
  // One kv head, tied embeddings, Llama 3 rope scaling.
  tied: { vocabSize: 258, hiddenSize: 16, intermediateSize: 20, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 8,
    tieWordEmbeddings: true, ropeTheta: 500000, maxPositionEmbeddings: 64,
    ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 4 } },
} as const;

/** sum_{b,t,v} w * logits of every sequence, in float64 through the reference. */
function refLoss(ref: ReferenceModel, seqs: number[][], w: Float64Array): number {
  let s = 0, o = 0;
  for (const toks of seqs) {
    const z = referenceLogits(ref, toks);
    for (let i = 0; i < z.length; ++i) s += z[i]! * w[o + i]!;
    o += z.length;
  }
  return s;
}

describe('backward pass = finite differences of the float64 reference', () => {
  for (const [label, config] of Object.entries(CONFIGS)) {
    it(`${label}: every parameter of every tensor`, async () => {
      const dir = path.join(root, label);
      await initModel(dir, { config, seed: 11, initStd: 0.35 });
      const model = await loadModel(dir, { threads: 2 });
      const trainer = new Trainer(model);
      const ref = loadReferenceModel(dir);
      const B = 2, S = 6, V = config.vocabSize;
      const r = rng(5);
      // Tokens below 40, so that the embedding rows 0..47 hold used and unused ones.
      const seqs = Array.from({ length: B }, () => Array.from({ length: S }, () => Math.floor(r() * 40)));
      const w = new Float64Array(B * S * V).map(() => r() * 2 - 1);
      const logits = await trainer.forward(Int32Array.from(seqs.flat()), B, S);
      // The forward itself agrees with the reference.
      let zi = 0, maxErr = 0;
      for (const toks of seqs) for (const v of referenceLogits(ref, toks)) maxErr = Math.max(maxErr, Math.abs(v - logits[zi++]!));
      expect(maxErr).toBeLessThan(2e-5);
      await trainer.backward(Float32Array.from(w));
      const grads = trainer.read('grads');
      const h = 1e-4;
      const names = new Set<string>();
      for (const t of trainer.tensors) {
        const p = ref.weights.get(t.name);
        expect(p, t.name).toBeDefined();
        names.add(t.name);
        // Every entry of tensors up to 2048; else 48 whole rows (the embedding's used rows) and 600 at random.
        const n = t.rows * t.cols;
        const idx = n <= 2048 ? Array.from({ length: n }, (_, i) => i)
          : [...Array.from({ length: 48 * t.cols }, (_, i) => i), ...Array.from({ length: 600 }, () => Math.floor(r() * n))];
        const fd = new Float64Array(n);
        for (const i of idx) {
          const x = p![i]!;
          p![i] = x + h;
          const up = refLoss(ref, seqs, w);
          p![i] = x - h;
          const down = refLoss(ref, seqs, w);
          p![i] = x;
          fd[i] = (up - down) / (2 * h);
        }
        const scale = fd.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
        expect(scale, t.name).toBeGreaterThan(1e-3);
        let worst = 0;
        for (const i of idx) {
          const g = grads[t.offset + i]!;
          // Stated tolerance for the f32 backward: 1e-4 relative plus 1e-5 of the tensor's largest entry.
          worst = Math.max(worst, Math.abs(g - fd[i]!) / (1e-4 * Math.abs(fd[i]!) + 1e-5 * scale));
        }
        expect(worst, `${t.name}: worst error / tolerance`).toBeLessThanOrEqual(1);
      }
      // Every weight of the model was checked.
      expect([...ref.weights.keys()].filter((k) => !names.has(k))).toEqual([]);
      trainer.dispose();
      model.dispose();
    }, 120_000);
  }
});

describe('long sequences (past the 64-row causal blocks of attention)', () => {
  it('S = 150: logits equal the reference; sampled gradient entries of every tensor equal finite differences', async () => {
    const dir = path.join(root, 'long');
    await initModel(dir, { config: { ...CONFIGS.gqa, maxPositionEmbeddings: 256 }, seed: 12, initStd: 0.35 });
    const model = await loadModel(dir, { threads: 2 });
    const trainer = new Trainer(model);
    const ref = loadReferenceModel(dir);
    const S = 150, V = CONFIGS.gqa.vocabSize;
    const r = rng(21);
    const seqs = [Array.from({ length: S }, () => Math.floor(r() * 40))];
    const w = new Float64Array(S * V).map(() => r() * 2 - 1);
    const logits = await trainer.forward(Int32Array.from(seqs[0]!), 1, S);
    const z = referenceLogits(ref, seqs[0]!);
    let maxErr = 0;
    for (let i = 0; i < z.length; ++i) maxErr = Math.max(maxErr, Math.abs(z[i]! - logits[i]!));
    expect(maxErr).toBeLessThan(5e-5);
    await trainer.backward(Float32Array.from(w));
    const grads = trainer.read('grads');
    const h = 1e-4;
    for (const t of trainer.tensors) {
      const p = ref.weights.get(t.name)!;
      const n = t.rows * t.cols;
      const idx = t.name.includes('embed') ? Array.from({ length: 12 }, (_, i) => (i % 40) * t.cols + Math.floor(r() * t.cols))
        : Array.from({ length: 12 }, () => Math.floor(r() * n));
      for (const i of idx) {
        const x = p[i]!;
        p[i] = x + h;
        const up = refLoss(ref, seqs, w);
        p[i] = x - h;
        const down = refLoss(ref, seqs, w);
        p[i] = x;
        const fd = (up - down) / (2 * h);
        expect(Math.abs(grads[t.offset + i]! - fd), `${t.name}[${i}]`).toBeLessThanOrEqual(2e-4 * Math.abs(fd) + 2e-3);
      }
    }
    trainer.dispose();
    model.dispose();
  }, 120_000);
});

describe('cross-entropy and AdamW', () => {
  it('cross-entropy and its gradient equal a float64 recomputation; -1 targets are ignored', async () => {
    const dir = path.join(root, 'ce');
    await initModel(dir, { config: CONFIGS.gqa, seed: 3, initStd: 0.5 });
    const model = await loadModel(dir);
    const trainer = new Trainer(model);
    const rows = 12, V = CONFIGS.gqa.vocabSize;
    const r = rng(9);
    const logits = new Float32Array(rows * V).map(() => (r() - 0.5) * 20);
    const targets = Int32Array.from({ length: rows }, (_, i) => (i % 5 === 4 ? -1 : Math.floor(r() * V)));
    const d = new Float32Array(rows * V).fill(0.25);
    const loss = await trainer.crossEntropy(logits, targets, d, 0.5);
    let want = 0, n = 0;
    const wantGrad = new Float64Array(rows * V).fill(0.25);
    for (let t = 0; t < rows; ++t) if (targets[t]! >= 0) n++;
    for (let t = 0; t < rows; ++t) {
      if (targets[t]! < 0) continue;
      const z = Array.from(logits.subarray(t * V, (t + 1) * V));
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
      want += lse - z[targets[t]!]!;
      for (let j = 0; j < V; ++j) wantGrad[t * V + j] = wantGrad[t * V + j]! + (0.5 * (Math.exp(z[j]! - lse) - (j === targets[t] ? 1 : 0))) / n;
    }
    expect(Math.abs(loss - want / n)).toBeLessThan(1e-5 * (want / n));
    for (let i = 0; i < d.length; ++i) expect(Math.abs(d[i]! - wantGrad[i]!)).toBeLessThan(1e-6);
    await expect(trainer.crossEntropy(logits, Int32Array.from({ length: rows }, () => V), null)).rejects.toMatchObject({ code: 'E_VALUE' });
    trainer.dispose();
    model.dispose();
  });

  it('AdamW with clipping and decoupled weight decay equals a float64 recomputation over 3 steps', async () => {
    const dir = path.join(root, 'adam');
    await initModel(dir, { config: CONFIGS.tied, seed: 4, initStd: 0.3 });
    const model = await loadModel(dir);
    const trainer = new Trainer(model);
    const o = { lr: 0.01, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1, maxGradNorm: 0.5 };
    const p = Float64Array.from(trainer.read('params'));
    const m = new Float64Array(p.length), v = new Float64Array(p.length);
    const r = rng(2);
    for (let step = 1; step <= 3; ++step) {
      const g = new Float32Array(trainer.size);
      for (const t of trainer.tensors) for (let i = 0; i < t.rows * t.cols; ++i) g[t.offset + i] = (r() - 0.5) * 0.1;
      trainer.write('grads', g);
      const norm = await trainer.adamw(o);
      const want = Math.sqrt(g.reduce((a, x) => a + x * x, 0));
      expect(Math.abs(norm - want)).toBeLessThan(1e-9 * want);
      const clip = want > o.maxGradNorm ? o.maxGradNorm / want : 1;
      for (const t of trainer.tensors) {
        for (let i = t.offset; i < t.offset + t.rows * t.cols; ++i) {
          const gi = g[i]! * clip;
          m[i] = o.beta1 * m[i]! + (1 - o.beta1) * gi;
          v[i] = o.beta2 * v[i]! + (1 - o.beta2) * gi * gi;
          const mh = m[i]! / (1 - o.beta1 ** step), vh = v[i]! / (1 - o.beta2 ** step);
          p[i] = p[i]! * (t.matrix ? 1 - o.lr * o.weightDecay : 1) - (o.lr * mh) / (Math.sqrt(vh) + o.eps);
        }
      }
    }
    const got = trainer.read('params');
    let worst = 0;
    for (let i = 0; i < p.length; ++i) worst = Math.max(worst, Math.abs(got[i]! - p[i]!));
    expect(worst).toBeLessThan(2e-6);
    expect(trainer.step).toBe(3);
    // A non-finite gradient changes nothing.
    const before = trainer.read('params');
    const bad = new Float32Array(trainer.size);
    bad[0] = NaN;
    trainer.write('grads', bad);
    expect(Number.isNaN(await trainer.adamw(o))).toBe(true);
    expect(trainer.read('params')).toEqual(before);
    expect(trainer.step).toBe(3);
    trainer.dispose();
    model.dispose();
  });

  it('a forward + backward gives the same bits on 1 and 2 threads', async () => {
    const dir = path.join(root, 'threads');
    await initModel(dir, { config: { ...CONFIGS.gqa, hiddenSize: 64, intermediateSize: 96, headDim: 16, maxPositionEmbeddings: 256 }, seed: 8 });
    const model = await loadModel(dir);
    const run = async (threads: number) => {
      setThreads(threads);
      const trainer = new Trainer(model);
      const B = 3, S = 140, V = CONFIGS.gqa.vocabSize;
      const tokens = Int32Array.from({ length: B * S }, (_, i) => (i * 7 + 3) % V);
      const logits = await trainer.forward(tokens, B, S);
      const targets = Int32Array.from({ length: B * S }, (_, i) => (i * 5 + 1) % V);
      const d = new Float32Array(logits.length);
      await trainer.crossEntropy(logits, targets, d);
      await trainer.backward(d);
      const g = trainer.read('grads');
      trainer.dispose();
      return { logits, g };
    };
    const a = await run(1), b = await run(2);
    expect(Buffer.from(a.logits.buffer).equals(Buffer.from(b.logits.buffer))).toBe(true);
    expect(Buffer.from(a.g.buffer).equals(Buffer.from(b.g.buffer))).toBe(true);
    model.dispose();
  });
});
