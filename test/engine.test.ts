// The speculative decoder (tests 2-6 of the engine issue): greedy output equal to greedy
// autoregressive decoding (checked against an independent argmax loop over full-sequence
// logits); determinism alone, in batches and with 1 or 2 threads; consistent statistics;
// AbortSignal, event-loop responsiveness and concurrent calls; streaming, stop strings;
// and every bad input as a SpeculaError with a code.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  getThreads, initModel, loadModel, PRESETS, setThreads, SpeculaError, SpeculativeDecoder, type GenerateOptions, type Model,
} from '../src/index.js';
import { TextState } from '../src/engine/text.js';
import { makePair, type Pair } from './helpers/pair.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'specula-engine-'));
const threadsBefore = getThreads();
let pair: Pair;
let target: Model;
let dec: SpeculativeDecoder;

beforeAll(async () => {
  pair = await makePair(root);
  target = await loadModel(pair.target);
  dec = await SpeculativeDecoder.load({ target, draft: pair.close, maxBatch: 16 });
}, 60_000);

afterAll(async () => {
  setThreads(threadsBefore);
  await dec?.dispose();
  target?.dispose();
  rmSync(root, { recursive: true, force: true });
});

const PROMPTS = ['Hello', 'The quick brown fox', 'a', '1 + 1 =', 'Once upon a time', 'xyz', 'Q:', 'héllo wörld €'];

async function expectError(p: Promise<unknown> | (() => unknown), code: string, text?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SpeculaError);
  expect((err as SpeculaError).code).toBe(code);
  if (text) expect((err as Error).message).toMatch(text);
}

/** Greedy decoding the plain way: argmax (first index) of full-sequence logits, token by token. */
async function greedyReference(model: Model, prompt: Int32Array, n: number): Promise<number[]> {
  const V = model.vocabSize, eos = model.tokenizer.eosTokenIds;
  const seq = [...prompt], out: number[] = [];
  for (let i = 0; i < n; i++) {
    const z = (await model.logits(seq)).subarray((seq.length - 1) * V);
    let best = 0;
    for (let x = 1; x < V; x++) if (z[x]! > z[best]!) best = x;
    out.push(best);
    seq.push(best);
    if (eos.includes(best)) break;
  }
  return out;
}

describe('greedy', () => {
  it('speculative output at temperature 0 equals greedy autoregressive decoding, token for token', async () => {
    const independent = await SpeculativeDecoder.load({ target, draft: pair.independent });
    try {
      for (const prompt of PROMPTS.slice(0, 4)) {
        const ref = await greedyReference(target, target.tokenizer.encode(prompt), 40);
        for (const d of [dec, independent]) {
          for (const gamma of [0, 1, 3, 6]) {
            const r = await d.generate(prompt, { maxNewTokens: 40, temperature: 0, gamma, seed: 1 });
            expect(r.tokens, `${prompt} gamma ${gamma}`).toEqual(ref);
          }
        }
      }
      // The close draft agrees with the target often at T = 0: the accept path is exercised.
      const r = await dec.generate(PROMPTS[0]!, { maxNewTokens: 40, temperature: 0, gamma: 3, seed: 1 });
      expect(r.stats.accepted).toBeGreaterThan(0);
    } finally {
      await independent.dispose();
    }
  });
});

describe('determinism', () => {
  const opts: GenerateOptions = { maxNewTokens: 30, temperature: 1, topP: 0.95, gamma: 3 };
  it('the same seed gives the same tokens alone, in a batch, concurrently, with 1 and 2 threads', async () => {
    const runs: number[][][] = [];
    for (const threads of [1, 2]) {
      setThreads(threads);
      const alone = [];
      for (let i = 0; i < PROMPTS.length; i++) alone.push((await dec.generate(PROMPTS[i]!, { ...opts, seed: [100 + i] })).tokens);
      // One batch of all prompts, each with its own seed.
      const batch = await dec.generate(PROMPTS, { ...opts, seed: PROMPTS.map((_, i) => 100 + i) });
      expect(batch.map((r) => r.tokens)).toEqual(alone);
      // Nine concurrent calls: each joins the running batch.
      const conc = await Promise.all(PROMPTS.map((p, i) => dec.generate(p, { ...opts, seed: [100 + i] })));
      expect(conc.map((r) => r.tokens)).toEqual(alone);
      // A scalar seed: input 0 of a batch has the seed of a single input.
      const single = await dec.generate(PROMPTS[0]!, { ...opts, seed: 77 });
      const withOthers = await dec.generate(PROMPTS, { ...opts, seed: 77 });
      expect(withOthers[0]!.tokens).toEqual(single.tokens);
      runs.push(alone);
    }
    expect(runs[1]).toEqual(runs[0]);
    // Different seeds give different samples.
    expect(new Set(runs[0]!.map((t) => t.join(','))).size).toBe(PROMPTS.length);
  });
});

describe('statistics', () => {
  it('are consistent', async () => {
    for (const gamma of [1, 3, 5]) {
      const results = await dec.generate(PROMPTS, { maxNewTokens: 60, temperature: 1, gamma, seed: 5 });
      for (const r of results) {
        const s = r.stats;
        expect(s.gamma).toBe(gamma);
        expect(s.accepted).toBeLessThanOrEqual(s.drafted);
        expect(s.drafted).toBeLessThanOrEqual(gamma * s.targetCalls);
        expect(s.draftCalls).toBe(s.drafted);
        expect(s.emitted).toBe(s.accepted + s.targetCalls);
        expect(s.tested).toBeGreaterThanOrEqual(s.accepted);
        expect(s.tested).toBeLessThanOrEqual(s.drafted);
        if (r.finishReason === 'length') expect(r.tokens.length).toBe(s.emitted);
        else expect(r.tokens.length).toBeLessThanOrEqual(s.emitted);
        expect(s.meanAcceptedLength).toBeCloseTo(s.emitted / s.targetCalls, 12);
        expect(s.acceptanceByPosition).toHaveLength(gamma);
        for (let i = 1; i < gamma; i++) expect(s.acceptanceByPosition[i]).toBeLessThanOrEqual(s.acceptanceByPosition[i - 1]!);
        expect(s.acceptanceRate).toBeGreaterThanOrEqual(0);
        expect(s.acceptanceRate).toBeLessThanOrEqual(1);
        expect(s.expectedAcceptance).toBeGreaterThan(0);
        expect(s.expectedAcceptance).toBeLessThanOrEqual(1);
        expect(s.costRatio).toBeGreaterThan(0);
        expect(s.tokensPerSecond).toBeGreaterThan(0);
        expect(s.targetMs + s.draftMs + s.samplingMs + s.prefillMs).toBeLessThanOrEqual(s.elapsedMs + 1e-6);
        const a = s.acceptanceRate, c = s.costRatio;
        expect(s.predictedSpeedup).toBeCloseTo((1 - a ** (gamma + 1)) / ((1 - a) * (gamma * c + 1)), 10);
      }
    }
  });

  it('gamma 0 is autoregressive: no drafts, one token per target call, predicted speedup 1', async () => {
    const r = await dec.generate('Hello', { maxNewTokens: 25, temperature: 1, gamma: 0, seed: 3 });
    expect(r.stats.drafted).toBe(0);
    expect(r.stats.draftCalls).toBe(0);
    expect(r.stats.targetCalls).toBe(r.tokens.length);
    expect(r.stats.predictedSpeedup).toBe(1);
  });

  it('ignoreEos: a run that ended at EOS continues through it to maxNewTokens, with the same tokens up to there', async () => {
    const eos = target.tokenizer.eosTokenIds;
    const opts = { maxNewTokens: 48, temperature: 2, gamma: 3 };
    let found = 0;
    for (let seed = 1; seed <= 60 && found < 2; ++seed) {
      const r = await dec.generate('Hello', { ...opts, seed });
      if (r.finishReason !== 'eos') continue;
      ++found;
      expect(eos).toContain(r.tokens.at(-1));
      const full = await dec.generate('Hello', { ...opts, seed, ignoreEos: true });
      expect(full.finishReason).toBe('length');
      expect(full.tokens.length).toBe(48);
      expect(full.tokens.slice(0, r.tokens.length)).toEqual(r.tokens);
    }
    expect(found).toBe(2);
  });

  it('realized acceptance matches the expected acceptance over many steps', async () => {
    const results = await dec.generate(Array(16).fill('The'), { maxNewTokens: 200, temperature: 1, gamma: 1, seed: 9 });
    // gamma 1: every drafted token is tested, so accepted / drafted estimates mean sum min(p, q).
    let acc = 0, n = 0, expSum = 0;
    for (const r of results) {
      acc += r.stats.accepted;
      n += r.stats.drafted;
      expSum += r.stats.expectedAcceptance * r.stats.drafted;
    }
    const alpha = acc / n, expected = expSum / n;
    const se = Math.sqrt((expected * (1 - expected)) / n);
    expect(Math.abs(alpha - expected)).toBeLessThan(4 * se);
  });
});

describe('responsiveness, abort and concurrency', () => {
  it('an AbortSignal ends generation within one step', async () => {
    const ctl = new AbortController();
    let steps = 0, atAbort = -1;
    const r = await dec.generate('Hello', {
      maxNewTokens: 400, temperature: 1, gamma: 3, seed: 1, signal: ctl.signal,
      onStep: () => {
        steps++;
        if (steps === 5) {
          atAbort = steps;
          ctl.abort();
        }
      },
    });
    expect(r.finishReason).toBe('aborted');
    expect(steps - atAbort).toBeLessThanOrEqual(1);
    expect(r.tokens.length).toBeLessThan(400);
    expect(r.stats.targetCalls).toBe(steps);
    // Aborted before it starts: no tokens.
    const pre = await dec.generate('Hello', { maxNewTokens: 10, temperature: 1, signal: AbortSignal.abort() });
    expect(pre.finishReason).toBe('aborted');
    expect(pre.tokens).toEqual([]);
  });

  it('keeps the event loop responsive and runs 8 concurrent calls correctly', async () => {
    // A model of ~10M parameters, so that steps take milliseconds; it drafts for itself.
    const mid = path.join(root, 'mid');
    await initModel(mid, {
      config: { ...PRESETS.tiny, hiddenSize: 384, intermediateSize: 1024, numLayers: 6, numHeads: 6, numKvHeads: 2, headDim: 64 },
      seed: 8, initStd: 0.1,
    });
    const d = await SpeculativeDecoder.load({ target: mid, draft: mid });
    const opts = { maxNewTokens: 200, temperature: 1, gamma: 3 };
    const alone = [];
    for (let i = 0; i < 8; i++) alone.push((await d.generate(PROMPTS[i]!, { ...opts, seed: [i] })).tokens);
    let last = performance.now(), maxLag = 0, ticks = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      maxLag = Math.max(maxLag, now - last - 10);
      last = now;
      ticks++;
    }, 10);
    const t0 = performance.now();
    try {
      const results = await Promise.all(PROMPTS.map((p, i) => d.generate(p, { ...opts, seed: [i] })));
      expect(results.map((r) => r.tokens)).toEqual(alone);
    } finally {
      clearInterval(timer);
      await d.dispose();
    }
    const ms = performance.now() - t0;
    expect(maxLag).toBeLessThan(100);
    if (ms > 100) expect(ticks).toBeGreaterThan(ms / 10 / 3);
  });
});

describe('streaming and stop strings', () => {
  it('stream deltas add up to the generate result', async () => {
    const opts: GenerateOptions = { maxNewTokens: 50, temperature: 1, gamma: 3, seed: 11 };
    const full = await dec.generate(['Hello', 'abc'], opts);
    const text = ['', ''], tokens: number[][] = [[], []];
    const reasons: (string | undefined)[] = [];
    for await (const c of dec.stream(['Hello', 'abc'], opts)) {
      text[c.index] += c.text;
      tokens[c.index]!.push(...c.tokens);
      if (c.finishReason) reasons[c.index] = c.finishReason;
    }
    expect(text).toEqual(full.map((r) => r.text));
    expect(tokens).toEqual(full.map((r) => r.tokens));
    expect(reasons).toEqual(full.map((r) => r.finishReason));
  });

  it('a stop string ends generation and is cut from the text, also when streamed', async () => {
    const opts: GenerateOptions = { maxNewTokens: 80, temperature: 1, gamma: 3, seed: [21] };
    const free = await dec.generate('Hello', opts);
    // A short piece of the free text, without replacement characters, as the stop string.
    let stop = '';
    for (let i = 10; i < free.text.length - 2 && stop === ''; i++) {
      const s = free.text.slice(i, i + 2);
      if (!s.includes('\uFFFD')) stop = s;
    }
    expect(stop).not.toBe('');
    const r = await dec.generate('Hello', { ...opts, stop: ['never appears \u0000', stop] });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(free.text.slice(0, free.text.indexOf(stop)));
    expect(r.tokens).toEqual(free.tokens.slice(0, r.tokens.length));
    let streamed = '';
    for await (const c of dec.stream('Hello', { ...opts, stop: [stop] })) streamed += c.text;
    expect(streamed).toBe(r.text);
  });

  it('streams multi-byte characters whole and holds back a possible stop string', () => {
    const tok = target.tokenizer;
    const text = 'héllo wörld € ✓ 𝄞 end';
    const ids = [...tok.encode(text, { addSpecialTokens: false })];
    const st = new TextState(tok, ['STOP']);
    let streamed = '';
    for (const id of ids) {
      st.push(id, false);
      const upto = st.stableLength(false);
      const delta = st.text.slice(streamed.length, upto);
      expect(delta).not.toContain('\uFFFD');
      streamed += delta;
    }
    st.flush();
    streamed += st.text.slice(streamed.length);
    expect(streamed).toBe(text);
    // "ST" may start "STOP": held back until it is known not to.
    const s2 = new TextState(tok, ['STOP']);
    for (const id of tok.encode('abc ST', { addSpecialTokens: false })) s2.push(id, false);
    expect(s2.text).toBe('abc ST');
    expect(s2.stableLength(false)).toBe(4);
    for (const id of tok.encode('OP and more', { addSpecialTokens: false })) if (!s2.push(id, false)) break;
    expect(s2.stopped).toBe(0);
    expect(s2.text).toBe('abc ');
  });
});

describe('errors', () => {
  it('incompatible vocabularies are E_UNSUPPORTED naming the first mismatch', async () => {
    const wide = path.join(root, 'wide');
    await initModel(wide, { config: { ...PRESETS.tiny, vocabSize: 330 }, seed: 4 });
    await expectError(SpeculativeDecoder.load({ target, draft: wide }), 'E_UNSUPPORTED', /vocabulary size 320 vs 330/);
    const swapped = path.join(root, 'swapped');
    cpSync(pair.close, swapped, { recursive: true });
    const tj = JSON.parse(readFileSync(path.join(swapped, 'tokenizer.json'), 'utf8'));
    tj.model.vocab['a'] = 98;
    tj.model.vocab['b'] = 97;
    writeFileSync(path.join(swapped, 'tokenizer.json'), JSON.stringify(tj));
    await expectError(SpeculativeDecoder.load({ target, draft: swapped }), 'E_UNSUPPORTED', /token 97 is "a" in the target, "b" in the draft/);
  });

  it('a prompt longer than the context is E_SHAPE', async () => {
    const small = await SpeculativeDecoder.load({ target, draft: pair.close, contextLength: 16 });
    try {
      await expectError(small.generate({ tokens: Array(16).fill(65) }, { maxNewTokens: 1, temperature: 1 }), 'E_SHAPE', /16 tokens.*context of 16/);
      // 15 tokens fit; generation stops at the context.
      const r = await small.generate({ tokens: Array(12).fill(65) }, { maxNewTokens: 50, temperature: 1, seed: 1 });
      expect(r.finishReason).toBe('length');
      expect(r.tokens.length).toBe(4);
    } finally {
      await small.dispose();
    }
  });

  it('every invalid option is a SpeculaError with a code', async () => {
    const ok = { maxNewTokens: 4, temperature: 1 };
    const bad: [unknown, unknown, string, RegExp][] = [
      ['x', { ...ok, maxNewTokens: 0 }, 'E_VALUE', /maxNewTokens/],
      ['x', { ...ok, maxNewTokens: '3' }, 'E_ARG', /maxNewTokens/],
      ['x', { ...ok, temperature: -1 }, 'E_VALUE', /temperature/],
      ['x', { maxNewTokens: 3 }, 'E_ARG', /temperature/],
      ['x', { ...ok, topP: 0 }, 'E_VALUE', /topP/],
      ['x', { ...ok, topK: 0 }, 'E_VALUE', /topK/],
      ['x', { ...ok, minP: 1 }, 'E_VALUE', /minP/],
      ['x', { ...ok, draft: { temperature: NaN } }, 'E_VALUE', /draft.temperature/],
      ['x', { ...ok, draft: { tempreature: 1 } }, 'E_ARG', /draft.tempreature: unknown option/],
      ['x', { ...ok, gamma: 65 }, 'E_VALUE', /gamma/],
      ['x', { ...ok, gamma: 1.5 }, 'E_VALUE', /gamma/],
      ['x', { ...ok, seed: -1 }, 'E_VALUE', /seed/],
      ['x', { ...ok, seed: 2n ** 64n }, 'E_VALUE', /seed/],
      ['x', { ...ok, seed: [1, 2] }, 'E_SHAPE', /seed/],
      ['x', { ...ok, stop: [''] }, 'E_VALUE', /stop\[0\]/],
      ['x', { ...ok, stop: 'a' }, 'E_ARG', /stop/],
      ['x', { ...ok, signal: {} }, 'E_ARG', /signal/],
      ['x', { ...ok, ignoreEos: 1 }, 'E_ARG', /options\.ignoreEos: expected a boolean/],
      ['x', { ...ok, onStep: 5 }, 'E_ARG', /onStep/],
      ['x', { ...ok, colour: 1 }, 'E_ARG', /colour: unknown option/],
      ['x', null, 'E_ARG', /options/],
      [[], ok, 'E_ARG', /input/],
      [5, ok, 'E_ARG', /input/],
      [{ tokens: [999] }, ok, 'E_VALUE', /input.tokens\[0\]/],
      [{ tokens: [] }, ok, 'E_SHAPE', /input/],
      [['a', { tokens: [-1] }], ok, 'E_VALUE', /input\[1\].tokens\[0\]/],
    ];
    for (const [input, options, code, text] of bad) {
      await expectError(dec.generate(input as string, options as GenerateOptions), code, text);
    }
    await expectError(SpeculativeDecoder.load({ target, draft: pair.close, maxBatch: 0 }), 'E_VALUE', /maxBatch/);
    await expectError(SpeculativeDecoder.load({ target, draft: pair.close, contextLength: 100000 }), 'E_VALUE', /contextLength/);
    await expectError(SpeculativeDecoder.load({ target, draft: 5 as unknown as string }), 'E_ARG', /draft/);
    await expectError(SpeculativeDecoder.load({ target, draft: path.join(root, 'missing') }), 'E_IO');
    await expectError(SpeculativeDecoder.load({ target, draft: pair.close, colour: 1 } as never), 'E_ARG', /colour/);
    // A throwing onStep fails that call only.
    await expect(dec.generate('x', { ...ok, onStep: () => { throw new Error('boom'); } })).rejects.toThrow('boom');
    expect((await dec.generate('x', { ...ok, seed: 1 })).tokens).toHaveLength(4);
  });

  it('use after dispose is E_STATE; dispose ends work in flight', async () => {
    const d = await SpeculativeDecoder.load({ target: pair.target, draft: pair.close });
    const running = d.generate('Hello', { maxNewTokens: 400, temperature: 1, seed: 1 });
    await d.dispose();  // the first step is in flight
    const r = await running;
    expect(r.finishReason).toBe('aborted');
    await expectError(d.generate('x', { maxNewTokens: 1, temperature: 1 }), 'E_STATE', /disposed/);
    await expectError(async () => {
      for await (const _ of d.stream('x', { maxNewTokens: 1, temperature: 1 })) void _;
    }, 'E_STATE', /disposed/);
    // The models it loaded are disposed; the target Model given to other decoders is not.
    expect((await target.logits([1])).length).toBe(target.vocabSize);
  });
});
