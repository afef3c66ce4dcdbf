// The README's API example runs as written (against the built package) and prints what
// it says it prints, so that the README stays true.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('README', () => {
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');

  it('starts with exactly the two fresh-machine commands', () => {
    const first = readme.split('```sh\n')[1]!.split('```')[0]!.trim().split('\n');
    expect(first).toHaveLength(2);
    expect(first[0]).toMatch(/^npm ci && npx specula bench /);
    expect(first[1]).toMatch(/^npm ci && npm test/);
  });

  it("shows the committed study's table: the one bench prints for bench/study/summary.json, with its charts", async () => {
    const { benchTable } = await import('../src/cli-bench.js');
    const summary = JSON.parse(readFileSync(path.join(root, 'bench', 'study', 'summary.json'), 'utf8'));
    const rows = summary.results.map(({ draft, temperature, gamma, ...rest }: { draft: string; temperature: number; gamma: number }) =>
      ({ draft, temperature, gamma, summary: rest }));
    expect(rows.length).toBe(32);
    const section = readme.split('## The temperature study')[1]!.split('\n## ')[0]!;
    expect(section).toContain(benchTable(rows));
    for (const png of ['speedup.png', 'acceptance.png']) {
      expect(section).toContain(`](bench/study/${png})`);
      expect([...readFileSync(path.join(root, 'bench', 'study', png)).subarray(1, 4)]).toEqual([0x50, 0x4e, 0x47]);
    }
    expect(summary.machines[0].cores).toBe(2);
    expect(summary.maxNewTokens).toBe(128);
  });

  it('runs the KD example', () => {
    const code = readme.split('## Knowledge distillation')[1]!.split('```js\n')[1]!.split('```')[0]!;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
    expect(out).toContain('Float32Array');
  });

  it('runs the model example', () => {
    const code = readme.split('## Models')[1]!.split('```js\n')[1]!.split('```')[0]!;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
    expect(out).toContain('LlamaForCausalLM 320 1920');
    expect(out).toContain('2 3 8 4');
    expect(out).toContain('"Hello"');
  });

  it('runs the speculative decoding example', () => {
    const code = readme.split('## Speculative decoding')[1]!.split('```js\n')[1]!.split('```')[0]!;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
    expect(out).toContain('16 length true');
    expect(out).toContain('[ true, true ]');
    expect(out).toMatch(/\[(length|stop|eos)\]/);
  });

  it('runs the API example', () => {
    const code = readme.split('## API')[1]!.split('```js\n')[1]!.split('```')[0]!;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
    expect(out).toContain('Int32Array');
    expect(out).toContain('E_VALUE gamma: expected an integer in [0, 2147483647], received -1');
  });
});
