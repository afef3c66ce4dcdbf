// `specula train`, `distill` and `eval-alignment` through the built CLI: a run writes a
// loadable checkpoint and resumes; the table prints; usage errors exit 2, SpeculaErrors 1.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli.js');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'specula-cli-train-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const corpus = path.join(tmp, 'c.txt');
const SMALL = '{"hiddenSize":32,"intermediateSize":64,"numLayers":1,"numHeads":2,"numKvHeads":1,"headDim":16,"maxPositionEmbeddings":128}';
const COMMON = ['--batch', '4', '--seq-len', '32', '--threads', '2', '--eval-windows', '4'];

beforeAll(() => {
  const paras: string[] = [];
  for (let i = 0; i < 120; ++i) paras.push(`Line ${i}: the quick brown fox jumps over ${i % 7} lazy dogs.\nAnd again ${i * 3}.`);
  writeFileSync(corpus, paras.join('\n\n'));
});

describe('specula train / distill / eval-alignment', () => {
  const target = path.join(tmp, 'target'), draft = path.join(tmp, 'draft');

  it('train writes a checkpoint, logs and resumes', () => {
    const r = run('train', '--corpus', corpus, '--config', SMALL, '--steps', '6', '--save-every', '3', '--out', target, '--seed', '1', ...COMMON);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/data: c\.txt: 120 text blocks/);
    expect(r.err).toMatch(/step 6\/6 loss [\d.]+/);
    expect(r.err).toMatch(/held-out loss/);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'optimizer.safetensors', 'trainer_state.json', 'train-log.jsonl']) {
      expect(existsSync(path.join(target, f)), f).toBe(true);
    }
    const again = run('train', '--corpus', corpus, '--config', SMALL, '--steps', '8', '--save-every', '3', '--out', target, '--seed', '1', ...COMMON);
    expect(again.code, again.err).toBe(0);
    expect(again.err).toContain('resuming at step 6 of 8');
    expect(JSON.parse(readFileSync(path.join(target, 'trainer_state.json'), 'utf8')).step).toBe(8);
  }, 60_000);

  it('distill and eval-alignment', () => {
    const d = run('distill', '--teacher', target, '--student-config', SMALL, '--data', corpus, '--divergence', 'rkl', '--temperature', '0.5',
      '--steps', '4', '--eval-temperatures', '0,1', '--dtype', 'bf16', '--out', draft, ...COMMON);
    expect(d.code, d.err).toBe(0);
    expect(d.err).toMatch(/held-out divergence [\d.]+; expected acceptance T=0: [\d.]+, T=1: [\d.]+/);
    const e = run('eval-alignment', '--target', target, '--draft', `${draft},${target}`, '--data', corpus, '--temperatures', '0.5,1.5', '--seq-len', '32', '--windows', '4');
    expect(e.code, e.err).toBe(0);
    expect(e.out).toContain('| draft | T=0.5 | T=1.5 |');
    expect(e.out).toMatch(new RegExp(`\\| ${target.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\| 1\\.000 ± 0\\.000 \\| 1\\.000 ± 0\\.000 \\|`));
  }, 60_000);

  it('bench: a table on stdout, results, summary and charts in --out; bench merge; bad --shard is a usage error', () => {
    const out = path.join(tmp, 'bench');
    const b = run('bench', '--target', target, '--draft', draft, '--dataset', corpus, '--temperatures', '0,1', '--prompts', '2', '--seeds', '1',
      '--max-new-tokens', '6', '--out', out);
    expect(b.code, b.err).toBe(0);
    expect(b.out).toContain('| draft | T | γ | AR tok/s | spec tok/s | speedup | α | τ | E[accept] | c | predicted |');
    expect(b.out.trim().split('\n').length).toBe(4);
    for (const f of ['results.jsonl', 'summary.json', 'speedup.svg', 'speedup.png', 'acceptance.svg', 'acceptance.png']) expect(existsSync(path.join(out, f)), f).toBe(true);
    expect(run('bench', '--shard', '3/3', '--out', out).code).toBe(2);
    // merge: one shard of a 2-cell grid is not the whole study; the unsharded output merges into itself.
    const m = run('bench', 'merge', out, '--out', path.join(tmp, 'bench-merged'));
    expect(m.code, m.err).toBe(0);
    expect(m.out.trim().split('\n').length).toBe(4);
    expect(m.err).toMatch(/merged 2 cells from 1 shard\(s\); wrote results\.jsonl, summary\.json, speedup\.svg, speedup\.png, acceptance\.svg, acceptance\.png/);
    const none = run('bench', 'merge', path.join(tmp, 'nowhere'));
    expect(none.code).toBe(1);
    expect(none.err).toMatch(/E_IO/);
    expect(run('bench', 'merge').code).toBe(2);
  }, 60_000);

  it('usage errors exit 2; bad input exits 1 with the code', () => {
    expect(run('train', '--corpus', corpus, '--steps', '2', '--out', path.join(tmp, 'x')).code).toBe(1); // neither --preset nor --config
    expect(run('train', '--corpus', corpus, '--preset', 'tiny', '--steps', 'many', '--out', path.join(tmp, 'x')).code).toBe(2);
    const missing = run('train', '--corpus', path.join(tmp, 'none.txt'), '--preset', 'tiny', '--steps', '2', '--out', path.join(tmp, 'y'));
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/none\.txt.*\[E_IO\]/);
    expect(run('distill', '--teacher', target, '--data', corpus, '--steps', '2', '--divergence', 'kl', '--out', path.join(tmp, 'z')).code).toBe(2);
    const bad = run('train', '--corpus', corpus, '--config', '{"hiddenSize":', '--steps', '2', '--out', path.join(tmp, 'w'));
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('--config: expected JSON');
  }, 60_000);
});
