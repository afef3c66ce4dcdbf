// train / distill / evalAlignment end to end on tiny models and a generated corpus: the
// loss falls, checkpoints load, an interrupted run resumes to the same bits, the errors
// of the training issue, and the expected-acceptance table against a float64 recomputation.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cosineLr, distill, evalAlignment, initModel, loadModel, train, type StepReport } from '../src/index.js';
import { loadReferenceModel, referenceLogits } from '../src/reference/index.js';
import { byteTokenizerJson } from '../src/model/tokenizer.js';
import { documentTokens, heldOutBatches, loadCorpus, windowBatch } from '../src/train/data.js';
import { mkdirSync } from 'node:fs';

const root = mkdtempSync(path.join(os.tmpdir(), 'specula-train-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const corpus = path.join(root, 'arith.jsonl');
const SMALL = { hiddenSize: 32, intermediateSize: 64, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 16, maxPositionEmbeddings: 128 };
const BASE = { steps: 30, batch: 4, seqLen: 48, lr: 1e-2, evalEvery: 0, evalWindows: 8, threads: 2 };

beforeAll(() => {
  // GSM8K-shaped records with a learnable pattern.
  const lines: string[] = [];
  for (let i = 0; i < 300; ++i) {
    const a = (i * 7) % 50, b = (i * 13) % 40;
    lines.push(JSON.stringify({ question: `What is ${a} plus ${b}?`, answer: `${a} + ${b} = ${a + b}\n#### ${a + b}` }));
  }
  writeFileSync(corpus, `${lines.join('\n')}\n`);
});

describe('data pipeline', () => {
  it('documents become BOS text EOS; windows are deterministic in (seed, step) and targets are the next tokens', async () => {
    const dir = path.join(root, 'tok');
    await initModel(dir, { config: { ...SMALL, vocabSize: 258 }, seed: 1 });
    const m = await loadModel(dir);
    expect(Array.from(documentTokens(m.tokenizer, 'Hi'))).toEqual([256, 72, 105, 257]);
    const c = loadCorpus(corpus, m.tokenizer, 48);
    expect(c.trainDocs + c.heldOutDocs).toBe(300);
    expect(c.heldOutDocs).toBe(6);
    const a = windowBatch(c.train, 4, 48, 9, 5), b = windowBatch(c.train, 4, 48, 9, 5), d = windowBatch(c.train, 4, 48, 9, 6);
    expect(a).toEqual(b);
    expect(a.tokens).not.toEqual(d.tokens);
    for (let t = 0; t + 1 < 48; ++t) expect(a.targets[t]).toBe(a.tokens[t + 1]);
    const ho = heldOutBatches(c.heldOut, 4, 48, 100);
    expect(ho.reduce((s, x) => s + x.tokens.length, 0)).toBe(Math.floor((c.heldOut.length - 1) / 48) * 48);
    m.dispose();
  });

  it('cosineLr: linear warmup, cosine to minLr', () => {
    expect(cosineLr(0, 100, 1, 10, 0.1)).toBeCloseTo(0.1, 12);
    expect(cosineLr(9, 100, 1, 10, 0.1)).toBeCloseTo(1, 12);
    expect(cosineLr(10, 100, 1, 10, 0.1)).toBeCloseTo(1, 12);
    expect(cosineLr(55, 100, 1, 10, 0.1)).toBeCloseTo(0.55, 12);
    expect(cosineLr(100, 100, 1, 10, 0.1)).toBeCloseTo(0.1, 12);
  });
});

describe('train', () => {
  it('the loss falls well below the uniform ln(258), the checkpoint loads, the log has every step', async () => {
    const out = path.join(root, 'run-a');
    const steps: StepReport[] = [];
    const r = await train({ ...BASE, corpus, config: SMALL, out, seed: 3, onStep: (s) => steps.push(s) });
    expect(steps.length).toBe(30);
    expect(steps[0]!.loss).toBeGreaterThan(5);
    expect(r.finalLoss).toBeLessThan(3.2);
    expect(r.lastEval!.heldOutLoss).toBeLessThan(3.4);
    const log = readFileSync(path.join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { kind: string });
    expect(log.filter((l) => l.kind === 'step').length).toBe(30);
    const m = await loadModel(out);
    expect(m.vocabSize).toBe(258);
    const state = JSON.parse(readFileSync(path.join(out, 'trainer_state.json'), 'utf8')) as { step: number };
    expect(state.step).toBe(30);
    m.dispose();
  }, 60_000);

  it('an interrupted run resumes to exactly the bits of an uninterrupted one', async () => {
    const full = path.join(root, 'full'), cut = path.join(root, 'cut');
    const opts = { ...BASE, steps: 8, saveEvery: 3, corpus, config: SMALL, seed: 4 };
    await train({ ...opts, out: full });
    const ctl = new AbortController();
    await expect(train({ ...opts, out: cut, signal: ctl.signal, onStep: (s) => s.step === 4 && ctl.abort() }))
      .rejects.toMatchObject({ code: 'E_ABORTED' });
    // Aborted after step 4, so the last checkpoint is step 3; the rerun continues from there.
    expect(JSON.parse(readFileSync(path.join(cut, 'trainer_state.json'), 'utf8')).step).toBe(3);
    // A crash between the optimizer file and trainer_state.json: the optimizer's step wins.
    const stateFile = path.join(cut, 'trainer_state.json');
    writeFileSync(stateFile, JSON.stringify({ ...JSON.parse(readFileSync(stateFile, 'utf8')), step: 0 }));
    let first = -1;
    await train({ ...opts, out: cut, onStart: (i) => (first = i.resumedFrom) });
    expect(first).toBe(3);
    for (const f of ['model.safetensors', 'optimizer.safetensors']) {
      expect(readFileSync(path.join(cut, f)).equals(readFileSync(path.join(full, f))), f).toBe(true);
    }
    // A resume with different options is refused.
    await expect(train({ ...opts, steps: 9, seed: 5, out: cut })).rejects.toMatchObject({ code: 'E_STATE' });
  }, 60_000);

  it('a NaN loss stops with a clear error and keeps the last good checkpoint', async () => {
    const out = path.join(root, 'nan');
    const opts = { ...BASE, steps: 2, corpus, config: SMALL, seed: 6, saveEvery: 2 };
    await train({ ...opts, out });
    // Poison the master weights of the checkpoint (the optimizer file), then continue.
    const file = path.join(out, 'optimizer.safetensors');
    const buf = readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    for (let i = 8 + n; i < buf.length; i += 4) buf.writeFloatLE(NaN, i);
    writeFileSync(file, buf);
    const model = readFileSync(path.join(out, 'model.safetensors'));
    await expect(train({ ...opts, steps: 4, out })).rejects.toThrow(/loss is NaN at step 3.*last good checkpoint/);
    expect(readFileSync(path.join(out, 'model.safetensors')).equals(model)).toBe(true);
    expect(JSON.parse(readFileSync(path.join(out, 'trainer_state.json'), 'utf8')).step).toBe(2);
  }, 60_000);

  it('--tokenizer DIR: the vocabulary, special ids and tokenizer files come from that directory', async () => {
    const tokDir = path.join(root, 'bpe');
    mkdirSync(tokDir, { recursive: true });
    const base = byteTokenizerJson().json as { model: { vocab: Record<string, number> } } & Record<string, unknown>;
    const vocab: Record<string, number> = { ...base.model.vocab };
    const merges = ['W h', 'Wh a', 'Wha t', 'p l', 'pl u', 'plu s'];
    let next = 256;
    for (const m of merges) vocab[m.replace(' ', '')] = next++;
    vocab['<|endoftext|>'] = next;
    const json = {
      ...base, added_tokens: [{ id: next, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
      post_processor: null, model: { ...(base.model as object), vocab, merges },
    };
    writeFileSync(path.join(tokDir, 'tokenizer.json'), JSON.stringify(json));
    writeFileSync(path.join(tokDir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>', bos_token: null }));
    const out = path.join(root, 'bpe-run');
    await train({ ...BASE, steps: 3, corpus, config: SMALL, tokenizer: tokDir, out });
    const cfg = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8')) as { vocab_size: number; eos_token_id: number; bos_token_id: number | null };
    expect(cfg.vocab_size).toBe(263);
    expect(cfg.eos_token_id).toBe(262);
    expect(cfg.bos_token_id).toBe(null);
    const m = await loadModel(out);
    expect(Array.from(m.tokenizer.encode('What', { addSpecialTokens: false }))).toEqual([258]);
    m.dispose();
  });

  it('bad input: missing or empty corpus, invalid config, bad numbers', async () => {
    const out = path.join(root, 'bad');
    await expect(train({ ...BASE, corpus: path.join(root, 'nope.jsonl'), config: SMALL, out })).rejects.toMatchObject({ code: 'E_IO' });
    const empty = path.join(root, 'empty.txt');
    writeFileSync(empty, '\n\n');
    await expect(train({ ...BASE, corpus: empty, config: SMALL, out: path.join(root, 'bad2') })).rejects.toMatchObject({ code: 'E_VALUE' });
    await expect(train({ ...BASE, corpus, config: { ...SMALL, numHeads: 3, numKvHeads: 2 }, out: path.join(root, 'bad3') }))
      .rejects.toThrow(/num_attention_heads/);
    await expect(train({ ...BASE, corpus, config: SMALL, out: path.join(root, 'bad4'), lr: -1 })).rejects.toThrow(/lr/);
    await expect(train({ ...BASE, corpus, config: SMALL, out: path.join(root, 'bad5'), seqLen: 1000 })).rejects.toThrow(/seqLen/);
  });
});

describe('distill and eval-alignment', () => {
  let teacher = '';
  beforeAll(async () => {
    teacher = path.join(root, 'teacher');
    await train({ ...BASE, steps: 40, corpus, config: { ...SMALL, hiddenSize: 48, numLayers: 2 }, out: teacher, seed: 7 });
  }, 60_000);

  it('KD lowers the held-out divergence and raises expected acceptance; every data source runs', async () => {
    const student = { hiddenSize: 16, intermediateSize: 32, numLayers: 1, numHeads: 1, numKvHeads: 1, headDim: 16 };
    const evals: { divergence: number; acc: Record<string, number> }[] = [];
    const r = await distill({
      ...BASE, steps: 30, teacher, studentConfig: student, data: corpus, divergence: 'fkl', temperature: 1, evalEvery: 1,
      out: path.join(root, 'kd-fixed'), seed: 1, evalTemperatures: [0.5, 1],
      onEval: (e) => evals.push({ divergence: e.heldOutDivergence!, acc: e.expectedAcceptance! }),
    });
    expect(evals.length).toBe(30);
    expect(evals.at(-1)!.divergence).toBeLessThan(0.5 * evals[0]!.divergence);
    expect(evals.at(-1)!.acc['1']).toBeGreaterThan(evals[0]!.acc['1']! + 0.1);
    expect(r.lastEval!.expectedAcceptance).toEqual(evals.at(-1)!.acc);
    for (const source of ['teacher', 'student', 'mixed'] as const) {
      const d = await distill({
        ...BASE, steps: 3, teacher, studentConfig: student, data: corpus, dataSource: source, divergence: 'jsd', temperature: 1.5,
        ceWeight: 0.3, out: path.join(root, `kd-${source}`), seed: 2, refreshEvery: 2,
      });
      expect(Number.isFinite(d.finalLoss)).toBe(true);
      const m = await loadModel(path.join(root, `kd-${source}`));
      m.dispose();
    }
  }, 120_000);

  it('a student with another vocabulary is refused (E_UNSUPPORTED)', async () => {
    const other = path.join(root, 'other-vocab');
    await initModel(other, { config: { ...SMALL, vocabSize: 300 }, seed: 1 });
    await expect(distill({ ...BASE, steps: 2, teacher, student: other, data: corpus, out: path.join(root, 'kd-bad') }))
      .rejects.toMatchObject({ code: 'E_UNSUPPORTED' });
  });

  it('evalAlignment equals a float64 recomputation of sum min(p_T, q_T); a draft equal to the target gives 1', async () => {
    const draft = path.join(root, 'kd-fixed');
    const temps = [0.5, 1, 2];
    const t = await evalAlignment({ target: teacher, drafts: [draft, teacher], data: corpus, temperatures: temps, seqLen: 32, windows: 3 });
    expect(t.positions).toBe(96);
    for (const a of t.rows[1]!.acceptance) expect(a).toBeCloseTo(1, 6);
    // Independent: reference logits in float64 over the same windows.
    const tm = loadReferenceModel(teacher), dm = loadReferenceModel(draft);
    const m = await loadModel(teacher);
    const stream = loadCorpus(corpus, m.tokenizer, 32, 0).train;
    m.dispose();
    const V = 258;
    temps.forEach((T, i) => {
      let sum = 0;
      for (let w = 0; w < 3; ++w) {
        const toks = Array.from(stream.subarray(w * 32, (w + 1) * 32));
        const zt = referenceLogits(tm, toks), zd = referenceLogits(dm, toks);
        for (let r = 0; r < 32; ++r) {
          const sm = (z: Float64Array) => {
            const row = Array.from(z.subarray(r * V, (r + 1) * V), (x) => x / T);
            const mx = Math.max(...row);
            const e = row.map((x) => Math.exp(x - mx));
            const s = e.reduce((a, x) => a + x, 0);
            return e.map((x) => x / s);
          };
          const p = sm(zt), q = sm(zd);
          sum += p.reduce((a, x, j) => a + Math.min(x, q[j]!), 0);
        }
      }
      expect(Math.abs(t.rows[0]!.acceptance[i]! - sum / 96)).toBeLessThan(2e-5);
    });
    expect(existsSync(draft)).toBe(true);
  }, 60_000);
});
