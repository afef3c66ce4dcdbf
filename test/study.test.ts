// The study core of `specula bench` (src/bench/study.ts): confidence intervals against
// textbook values, deterministic shards that partition the grid, and a small study whose
// per-run numbers agree with their definitions.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EMBEDDED_PROMPTS } from '../src/bench/prompts.js';
import { estimate, gridCells, runStudy, shardCells } from '../src/bench/study.js';
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

describe('bench (results.jsonl and summary.json)', () => {
  it('writes one record per cell with configuration, machine and raw runs; shards split the cells; a bad dataset names its line', async () => {
    const { bench } = await import('../src/bench/run.js');
    const { readFileSync, writeFileSync } = await import('node:fs');
    const pair = await makePair(root);
    const prompts = path.join(root, 'prompts.txt');
    writeFileSync(prompts, 'Hello\nThe cat\nOnce upon\n');
    const base = { target: pair.target, drafts: [pair.close, pair.independent], temperatures: [0, 1], gammas: [2], seeds: 1, maxNewTokens: 8, dataset: prompts };
    const full = await bench({ ...base, out: path.join(root, 'b-full') });
    expect(full.records.length).toBe(4);
    const lines = readFileSync(path.join(root, 'b-full', 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.length).toBe(4);
    expect(lines[0].config.prompts).toEqual({ source: 'prompts.txt: 3 prompts (one per line)', count: 3 });
    expect(lines[0].runs.length).toBe(3);
    expect(lines[0].machine.backend).toBe('cpu');
    const summary = JSON.parse(readFileSync(path.join(root, 'b-full', 'summary.json'), 'utf8'));
    expect(summary.cells.length).toBe(4);
    const parts = [];
    for (let i = 0; i < 3; ++i) parts.push(...(await bench({ ...base, out: path.join(root, `b-${i}`), shard: { index: i, count: 3 } })).records);
    expect(parts.map((r) => r.config.cell).sort()).toEqual([0, 1, 2, 3]);
    // The deterministic numbers (tokens and acceptance) agree with the unsharded run.
    for (const r of parts) {
      const f = full.records.find((x) => x.config.cell === r.config.cell)!;
      expect(r.runs.map((x) => [x.specTokens, x.alpha, x.tau, x.expectedAcceptance])).toEqual(f.runs.map((x) => [x.specTokens, x.alpha, x.tau, x.expectedAcceptance]));
    }
    const bad = path.join(root, 'bad.jsonl');
    writeFileSync(bad, '{"question": "a"}\n{"question": \n');
    await expect(bench({ ...base, dataset: bad, out: path.join(root, 'b-bad') })).rejects.toThrow(/bad\.jsonl:2:/);
  }, 60_000);
});
