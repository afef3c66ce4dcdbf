// The study core of `specula bench` (src/bench/study.ts): confidence intervals against
// textbook values, deterministic shards that partition the grid, and a small study whose
// per-run numbers agree with their definitions.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EMBEDDED_PROMPTS } from '../src/bench/prompts.js';
import { bench, merge, readResults } from '../src/bench/run.js';
import { resultsJsonSchema, type CellRecord } from '../src/bench/schema.js';
import { estimate, fitPrompts, gridCells, runStudy, shardCells } from '../src/bench/study.js';
import { loadModel } from '../src/index.js';
import { makePair } from './helpers/pair.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'specula-study-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('study statistics and grid', () => {
  it('estimate: mean and the 95% t interval', () => {
    // n = 4, mean 2.5, sd = sqrt(5/3); t(0.975, 3) = 3.182.
    const e = estimate([1, 2, 3, 4]);
    expect(e.mean).toBe(2.5);
    expect(e.hi - e.mean).toBeCloseTo((3.182 * Math.sqrt(5 / 3)) / 2, 10);
    expect(e.mean - e.lo).toBeCloseTo(e.hi - e.mean, 12);
    // Large n: the normal quantile.
    const xs = Array.from({ length: 100 }, (_, i) => i % 2);
    const big = estimate(xs);
    expect(big.hi - big.mean).toBeCloseTo((1.96 * Math.sqrt(25 / 99)) / 10, 10);
    expect(estimate([7])).toEqual({ mean: 7, lo: 7, hi: 7, n: 1 });
  });

  it('shards partition the grid deterministically; bad shards are refused', () => {
    const cells = gridCells({ drafts: ['a', 'b'], temperatures: [0, 0.5, 1], gammas: [2, 4] });
    expect(cells.length).toBe(12);
    const parts = [0, 1, 2].map((i) => shardCells(cells, i, 3));
    expect(parts.flat().map((c) => c.index).sort((x, y) => x - y)).toEqual(cells.map((c) => c.index));
    expect(shardCells(cells, 1, 3)).toEqual(shardCells(gridCells({ drafts: ['a', 'b'], temperatures: [0, 0.5, 1], gammas: [2, 4] }), 1, 3));
    expect(() => shardCells(cells, 3, 3)).toThrow(/shard/);
    expect(() => shardCells(cells, 0, 0)).toThrow(/shard/);
  });

  it('the embedded prompt set: at least 32 distinct GSM8K-style prompts', () => {
    expect(new Set(EMBEDDED_PROMPTS).size).toBeGreaterThanOrEqual(32);
    for (const p of EMBEDDED_PROMPTS) expect(p).toMatch(/^Question: .+\?\nAnswer:$/s);
  });
});

describe('fitPrompts', () => {
  it('cuts prompts that leave no room for the budget to BOS + their last tokens; refuses a budget the context cannot hold', async () => {
    const pair = await makePair(root);
    const m = await loadModel(pair.target);
    try {
      const long = 'abcdefghijklmnopqrstuvwxyz0123'; // 30 bytes: BOS + 30 tokens
      const r = fitPrompts(m, ['short', long], 20, 8);
      expect(r.cut).toEqual({ count: 1, keep: 12, context: 20 });
      expect(r.prompts[0]!.tokens).toEqual([...m.tokenizer.encode('short')]);
      const cut = r.prompts[1]!.tokens;
      expect(cut.length).toBe(12);
      expect(cut[0]).toBe(m.tokenizer.bosTokenId);
      expect(m.tokenizer.decode(Int32Array.from(cut.slice(1)))).toBe(long.slice(-11));
      expect(fitPrompts(m, ['short'], 20, 8).cut).toBeNull();
      expect(() => fitPrompts(m, ['short'], 20, 19)).toThrow(/maxNewTokens: expected at most 18/);
    } finally {
      m.dispose();
    }
  });
});

describe('runStudy', () => {
  it('per-run numbers follow their definitions; every interval contains its estimate', async () => {
    const pair = await makePair(root);
    const res = await runStudy({
      target: pair.target, drafts: [pair.close], temperatures: [0, 1], gammas: [3], prompts: ['Hello', 'The'], seeds: 2, maxNewTokens: 16,
    });
    expect(res.map((c) => [c.temperature, c.gamma])).toEqual([[0, 3], [1, 3]]);
    for (const c of res) {
      expect(c.runs.length).toBe(4);
      for (const r of c.runs) {
        expect(r.specTokens).toBe(16);
        expect(r.speedup).toBeCloseTo(r.specTokensPerSecond / r.arTokensPerSecond, 12);
        expect(r.alpha).toBeGreaterThanOrEqual(0);
        expect(r.alpha).toBeLessThanOrEqual(1);
        expect(r.tau).toBeGreaterThanOrEqual(1);
        expect(r.tau).toBeLessThanOrEqual(4);
      }
      for (const e of [c.summary.speedup, c.summary.alpha, c.summary.tau, c.summary.expectedAcceptance, ...c.summary.acceptanceByPosition]) {
        expect(e.lo).toBeLessThanOrEqual(e.mean);
        expect(e.hi).toBeGreaterThanOrEqual(e.mean);
      }
    }
    // Greedy: the target's argmax sequence is the same with and without the draft, and
    // a greedy draft's expected acceptance is its realized acceptance.
    for (const r of res[0]!.runs) expect(r.arTokens).toBe(r.specTokens);
    expect(res[0]!.summary.expectedAcceptance.mean).toBeCloseTo(res[0]!.summary.alpha.mean, 12);
  }, 60_000);
});

describe('bench end to end: outputs, schema, intervals, shards and merge', () => {
  // The tiny pair, 2 temperatures × 2 drafts, 3 prompts × 2 seeds × 8 tokens: the whole
  // study with every output, 3 shards and their merge, within the CI budget.
  const deterministic = (r: CellRecord) => ({
    config: r.config, schema: r.schema,
    runs: r.runs.map((x) => [x.prompt, x.seed, x.arTokens, x.specTokens, x.alpha, x.tau, x.acceptanceByPosition, x.expectedAcceptance]),
    summary: [r.summary.alpha, r.summary.tau, r.summary.expectedAcceptance, r.summary.acceptanceByPosition],
  });
  const estimates = (s: CellRecord['summary']) => [s.arTokensPerSecond, s.specTokensPerSecond, s.speedup, s.alpha, s.tau, s.expectedAcceptance,
    s.costRatio, s.predictedSpeedup, ...s.acceptanceByPosition];
  let base: Parameters<typeof bench>[0];
  let full: Awaited<ReturnType<typeof bench>>;

  beforeAll(async () => {
    const pair = await makePair(root);
    const prompts = path.join(root, 'prompts.txt');
    writeFileSync(prompts, 'Hello\nThe cat\nOnce upon\n');
    base = { target: pair.target, drafts: [pair.close, pair.independent], temperatures: [0, 1], gammas: [2], seeds: 2, maxNewTokens: 8, dataset: prompts, out: '' };
    full = await bench({ ...base, out: path.join(root, 'b-full') });
  }, 60_000);

  it('writes results.jsonl, summary.json and both charts as SVG and PNG', () => {
    const out = path.join(root, 'b-full');
    expect(full.files.map((f) => path.basename(f)).sort()).toEqual(
      ['acceptance.png', 'acceptance.svg', 'results.jsonl', 'speedup.png', 'speedup.svg', 'summary.json']);
    const lines = readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.config.cell)).toEqual([0, 1, 2, 3]);
    expect(lines[0].config.prompts).toEqual({ source: 'prompts.txt: 3 prompts (one per line)', count: 3 });
    expect(lines[0].runs.length).toBe(6);
    expect(lines[0].machine.backend).toBe('cpu');
    const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(summary.results.length).toBe(4);
    expect(summary.results[3].alpha).toEqual(lines[3].summary.alpha);
    for (const name of ['speedup', 'acceptance']) {
      const svg = readFileSync(path.join(out, `${name}.svg`), 'utf8');
      expect(svg).toMatch(/^<svg[^>]*width="\d+"/);
      // One legend entry per draft, the axis title, and the data: a path per line.
      expect(svg).toContain('tiny-close');
      expect(svg).toContain('tiny-independent');
      expect(svg).toContain('decoding temperature T');
      const png = readFileSync(path.join(out, `${name}.png`));
      expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
      const width = png.readUInt32BE(16), height = png.readUInt32BE(20);
      const svgWidth = Number(/width="(\d+)"/.exec(svg)![1]);
      expect(width).toBe(2 * svgWidth); // rendered at 2x
      expect(height).toBeGreaterThan(300);
    }
  });

  it('results.jsonl validates against the published JSON Schema, which is the one generated from the code', async () => {
    const published = JSON.parse(readFileSync(new URL('../src/bench/results.schema.json', import.meta.url), 'utf8'));
    expect(published).toEqual(resultsJsonSchema());
    const { Ajv2020 } = await import('ajv/dist/2020.js');
    const validate = new Ajv2020({ allErrors: true, strict: false }).compile(published);
    const lines = readFileSync(path.join(root, 'b-full', 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    for (const l of lines) expect(validate(l), JSON.stringify(validate.errors)).toBe(true);
    // The schema can fail: a missing field, a wrong type, an unknown key, a bad shard.
    const broken = [
      { ...lines[0], runs: undefined },
      { ...lines[0], summary: { ...lines[0].summary, alpha: { ...lines[0].summary.alpha, mean: 'high' } } },
      { ...lines[0], extra: 1 },
      { ...lines[0], config: { ...lines[0].config, shard: { index: -1, count: 2 } } },
      { ...lines[0], schema: 'specula-bench-results/0' },
    ];
    for (const b of broken) expect(validate(JSON.parse(JSON.stringify(b)))).toBe(false);
  });

  it('every interval contains its point estimate and the per-run numbers follow their definitions', () => {
    for (const r of full.records) {
      expect(r.config.stopAtEos).toBe(false);
      // A fixed budget: both sides of every speedup generated exactly maxNewTokens tokens.
      for (const x of r.runs) expect([x.arTokens, x.specTokens]).toEqual([8, 8]);
      for (const e of estimates(r.summary)) {
        expect(e.n).toBe(6);
        expect(e.lo).toBeLessThanOrEqual(e.mean);
        expect(e.mean).toBeLessThanOrEqual(e.hi);
      }
      expect(r.summary.alpha.mean).toBeCloseTo(r.runs.reduce((a, x) => a + x.alpha, 0) / r.runs.length, 12);
      for (const x of r.runs) expect(x.speedup).toBeCloseTo(x.specTokensPerSecond / x.arTokensPerSecond, 12);
    }
  });

  it('3 shards merged give the unsharded numbers; merge refuses gaps, duplicates, other grids and malformed files', async () => {
    const dirs = [0, 1, 2].map((i) => path.join(root, `b-${i}`));
    for (let i = 0; i < 3; ++i) {
      const part = await bench({ ...base, out: dirs[i]!, shard: { index: i, count: 3 } });
      expect(part.records.map((r) => r.config.cell)).toEqual([0, 1, 2, 3].filter((c) => c % 3 === i));
      expect(part.records.every((r) => r.config.shard?.index === i && r.config.shard.count === 3)).toBe(true);
    }
    const merged = await merge(dirs, path.join(root, 'b-merged'));
    expect(merged.files.map((f) => path.basename(f)).sort()).toEqual(full.files.map((f) => path.basename(f)).sort());
    expect(merged.records.map(deterministic)).toEqual(full.records.map(deterministic));
    // The merged files hold the same records as the unsharded ones (timings aside).
    const read = (d: string) => readResults(path.join(root, d, 'results.jsonl')).map(deterministic);
    expect(read('b-merged')).toEqual(read('b-full'));
    const sum = (d: string) => { const s = JSON.parse(readFileSync(path.join(root, d, 'summary.json'), 'utf8')); return [s.cells, s.gridCells, s.shard, s.drafts, s.results.map((c: { alpha: unknown }) => c.alpha)]; };
    expect(sum('b-merged')).toEqual(sum('b-full'));

    await expect(merge(dirs.slice(0, 2), path.join(root, 'm-x'))).rejects.toThrow(/cover 3 of 4 cells; missing cells 2; with 3 shards, missing shard\(s\) 2\/3/);
    await expect(merge([...dirs, dirs[1]!], path.join(root, 'm-x'))).rejects.toThrow(/cell 1 is in both/);
    const other = path.join(root, 'b-other');
    await bench({ ...base, seeds: 1, out: other, shard: { index: 2, count: 3 } });
    await expect(merge([dirs[0]!, dirs[1]!, other], path.join(root, 'm-x'))).rejects.toThrow(/seeds = 1 but .* has 2; shards of one study share their grid/);
    const bad = path.join(root, 'b-bad.jsonl');
    const good = readFileSync(path.join(dirs[0]!, 'results.jsonl'), 'utf8').trim().split('\n');
    writeFileSync(bad, `${good[0]}\n${good[0]!.replace('"alpha":{', '"alpha":{"x":1,')}\n`);
    await expect(merge([bad], path.join(root, 'm-x'))).rejects.toMatchObject({ code: 'E_FORMAT', message: expect.stringMatching(/b-bad\.jsonl:2: summary\.alpha: /) });
    writeFileSync(bad, '{"schema":\n');
    await expect(merge([bad], path.join(root, 'm-x'))).rejects.toThrow(/b-bad\.jsonl:1: not JSON/);
    await expect(merge([path.join(root, 'nowhere')], path.join(root, 'm-x'))).rejects.toMatchObject({ code: 'E_IO' });
  }, 60_000);

  it('a malformed dataset file names its line', async () => {
    const bad = path.join(root, 'bad.jsonl');
    writeFileSync(bad, '{"question": "a"}\n{"question": \n');
    await expect(bench({ ...base, dataset: bad, out: path.join(root, 'b-bad') })).rejects.toMatchObject({ code: 'E_FORMAT', message: expect.stringMatching(/bad\.jsonl:2:/) });
  });
});
