// Fixtures: every directory test/fixtures/models/*/ that holds a model and an
// expected.json ({ source, tokens, logits: [positions][vocab], tolerance }) is loaded and
// its logits compared with the expected ones. Fixtures come from an implementation
// independent of the native runtime: Hugging Face transformers (make_hf_fixture.py, run
// where torch and transformers are installed) or the float64 TypeScript reference
// (make-reference-fixture.mjs). (Test 3 of the model-runtime issue.)
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';

interface Expected {
  source: string;
  tokens: number[];
  logits: number[][];
  tolerance: number;
}

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'models');
const fixtures = existsSync(root)
  ? readdirSync(root).filter((d) => existsSync(path.join(root, d, 'expected.json'))).sort()
  : [];

describe('model fixtures', () => {
  it('the fixture directory holds at least one fixture', () => {
    expect(fixtures.length).toBeGreaterThan(0);
  });

  for (const name of fixtures) {
    it(name, async () => {
      const dir = path.join(root, name);
      const exp = JSON.parse(readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
      expect(exp.logits.length).toBe(exp.tokens.length);
      const model = await loadModel(dir);
      try {
        const got = await model.logits(exp.tokens);
        const V = model.vocabSize;
        let err = 0;
        exp.logits.forEach((row, t) => {
          expect(row.length).toBe(V);
          row.forEach((v, x) => (err = Math.max(err, Math.abs(got[t * V + x]! - v))));
        });
        console.log(`${name}: max abs error ${err.toExponential(2)} (tolerance ${exp.tolerance}; ${exp.source})`);
        expect(err).toBeLessThanOrEqual(exp.tolerance);
      } finally {
        model.dispose();
      }
    });
  }
});
