// The package as users get it: root exports of the built dist (through Node's own
// resolution of "exports"), the CLI's exit codes, and the single native source list.
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('package', () => {
  it('exports the API from the package root and the reference from specula/reference', () => {
    const script = `
      const m = await import('specula');
      const r = await import('specula/reference');
      const z = new Float32Array([0, 1, 2]);
      console.log(JSON.stringify({
        root: Object.keys(m).sort(), reference: Object.keys(r).sort(),
        token: m.sample(z, { rows: 1, vocab: 3, params: { temperature: 0 }, seeds: [1] })[0],
        info: m.runtimeInfo(),
      }));`;
    const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' }));
    expect(out.root).toEqual(expect.arrayContaining([
      'SpeculaError', 'getThreads', 'probabilities', 'probabilitiesAsync', 'runtimeInfo', 'sample', 'sampleAsync',
      'setThreads', 'verify', 'verifyAsync', 'version', 'loadModel', 'initModel', 'Model', 'KvCache', 'Tokenizer',
      'PRESETS',
    ]));
    expect(out.reference).toEqual(expect.arrayContaining([
      'referenceProbabilities', 'referenceSample', 'referenceVerify', 'uniform', 'loadReferenceModel', 'referenceLogits',
    ]));
    expect(out.token).toBe(2);
    expect(out.info.version).toBe(JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).version);
    expect(['avx512', 'avx2', 'portable']).toContain(out.info.simd);
    expect(typeof out.info.amx).toBe('boolean');
    expect(out.info.amxPieces).toBe(out.info.amx ? 2 : 0);
    // SPECULA_AMX=0 turns the AMX path of bf16 products off; SPECULA_AMX=3 makes it split
    // activations into three pieces.
    const amxWith = (value: string) => execFileSync(process.execPath, ['--input-type=module', '-e',
      "const m = await import('specula'); const i = m.runtimeInfo(); console.log(i.amx, i.amxPieces)"],
    { cwd: root, encoding: 'utf8', env: { ...process.env, SPECULA_AMX: value } }).trim();
    expect(amxWith('0')).toBe('false 0');
    expect(amxWith('3')).toBe(out.info.amx ? 'true 3' : 'false 0');
    // SPECULA_PREFETCH picks where the matrix kernels prefetch; anything else: the CPU's default.
    expect(['l1', 'l2']).toContain(out.info.prefetch);
    const prefetchWith = (value: string) => execFileSync(process.execPath, ['--input-type=module', '-e',
      "const m = await import('specula'); console.log(m.runtimeInfo().prefetch)"],
    { cwd: root, encoding: 'utf8', env: { ...process.env, SPECULA_PREFETCH: value } }).trim();
    expect(prefetchWith('l1')).toBe('l1');
    expect(prefetchWith('l2')).toBe('l2');
    expect(prefetchWith('L3')).toBe(out.info.prefetch);
    for (const f of ['index.d.ts', 'sampling.d.ts', 'reference/index.d.ts', 'model/model.d.ts']) {
      expect(readFileSync(path.join(root, 'dist', f), 'utf8').length).toBeGreaterThan(0);
    }
  });

  it('the specula CLI: --help, demo, and one-line errors with exit code 2', () => {
    const cli = path.join(root, 'dist', 'cli.js');
    const help = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('demo');
    const demo = spawnSync(process.execPath, [cli, 'demo', '--batch', '2', '--vocab', '50', '--gamma', '2'], { encoding: 'utf8' });
    expect(demo.status, demo.stderr).toBe(0);
    expect(demo.stdout).toContain('verify ms');
    const bad = spawnSync(process.execPath, [cli, 'demo', '--batch', 'x'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("option '--batch <n>' argument 'x' is invalid");
    const unknown = spawnSync(process.execPath, [cli, 'demo', '--nope'], { encoding: 'utf8' });
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain("unknown option '--nope'");
  });

  it('native/sources.json lists every native source, and both builds read it', () => {
    const list = JSON.parse(readFileSync(path.join(root, 'native', 'sources.json'), 'utf8'));
    const listed = new Set<string>([...list.core, ...list.addon, ...list.cuda]);
    for (const dir of ['native/core', 'native/addon', 'native/cuda']) {
      for (const f of readdirSync(path.join(root, dir))) {
        if (/\.(cc|cu)$/.test(f)) expect(listed.has(`${dir}/${f}`), `${dir}/${f} is not in native/sources.json`).toBe(true);
      }
    }
    expect(readFileSync(path.join(root, 'binding.gyp'), 'utf8')).toContain("require('./native/sources.json')");
    expect(readFileSync(path.join(root, 'CMakeLists.txt'), 'utf8')).toContain('native/sources.json');
  });
});
