// The `specula` command line: init-model and generate (JSON and streamed), --help for
// every flag, usage errors as one line with exit code 2, SpeculaErrors with exit code 1.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli.js');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'specula-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('specula CLI', () => {
  const target = path.join(tmp, 't'), draft = path.join(tmp, 'd');

  it('init-model writes model directories', () => {
    expect(run('init-model', '--out', target, '--preset', 'tiny', '--seed', '1', '--init-std', '0.7').code).toBe(0);
    const r = run('init-model', '--out', draft, '--config', '{"hiddenSize":32,"numHeads":2,"numKvHeads":1,"headDim":16}', '--seed', '2', '--dtype', 'bf16');
    expect(r.code).toBe(0);
    expect(r.err).toContain('wrote');
  });

  it('generate --json prints the result; streamed text goes to stdout, stats to stderr', () => {
    const base = ['generate', '--target', target, '--draft', target, '--prompt', 'Hello', '--max-new-tokens', '12', '--seed', '3'];
    const j = run(...base, '--json', '--temperature', '0');
    expect(j.code).toBe(0);
    const res = JSON.parse(j.out);
    expect(res.tokens).toHaveLength(12);
    expect(res.finishReason).toBe('length');
    expect(res.stats.targetCalls).toBeGreaterThan(0);
    const s = run(...base, '--temperature', '0');
    expect(s.code).toBe(0);
    expect(s.out).toBe(`${res.text}\n`);
    expect(s.err).toMatch(/acceptance .* tau .* tokens\/s/s);
    expect(s.err).toContain('predicted speedup');
    // A draft of another shape (hidden 32, bf16) with the same byte tokenizer is compatible.
    expect(run(...base, '--draft', draft, '--gamma', '2').code).toBe(0);
  });

  it('documents every flag and rejects bad ones with one line and exit code 2', () => {
    const help = run('generate', '--help').out;
    for (const flag of ['--target', '--draft', '--prompt', '--temperature', '--top-k', '--top-p', '--min-p', '--draft-temperature',
      '--gamma', '--max-new-tokens', '--seed', '--json', '--stop', '--threads']) expect(help).toContain(flag);
    expect(run('init-model', '--help').out).toContain('--preset');
    for (const bad of [
      ['generate', '--target', target, '--draft', target, '--prompt', 'x', '--top-p', '2'],
      ['generate', '--target', target, '--draft', target, '--prompt', 'x', '--gamma', '-1'],
      ['generate', '--target', target, '--draft', target],
      ['generate', '--bogus'],
      ['init-model', '--out', target, '--preset', 'nope', '--seed', '1'],
    ]) {
      const r = run(...bad);
      expect(r.code, bad.join(' ')).toBe(2);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
    const missing = run('generate', '--target', path.join(tmp, 'missing'), '--draft', target, '--prompt', 'x');
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('[E_IO]');
  });
});
