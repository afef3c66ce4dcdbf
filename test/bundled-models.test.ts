// The bundled pair in models/: every directory loads, f16, within the size budget, with
// one vocabulary; and the expected-acceptance table of models/README.md reproduces (when
// ../shared/data is beside the repository).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { evalAlignment, loadModel, SpeculativeDecoder } from '../src/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const models = path.join(root, 'models');
const gsm8kTest = path.join(root, '..', 'shared', 'data', 'gsm8k-test.jsonl');
const DIRS = ['target', 'draft-ce', 'draft-kd-t0.5', 'draft-kd-t1.0', 'draft-kd-t1.5'];

describe('bundled models', () => {
  it('load as f16 byte-level models of one vocabulary, 25 MB at most in all, drafts 5-10% of the target', async () => {
    let bytes = 0;
    for (const d of readdirSync(models)) {
      const p = path.join(models, d);
      // The committed files (training state beside them is .gitignore'd).
      if (statSync(p).isDirectory()) {
        for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) bytes += statSync(path.join(p, f)).size;
      }
    }
    expect(bytes).toBeLessThanOrEqual(25e6);
    const target = await loadModel(path.join(models, 'target'));
    const targetBytes = statSync(path.join(models, 'target', 'model.safetensors')).size;
    for (const d of DIRS.slice(1)) {
      const cfg = JSON.parse(readFileSync(path.join(models, d, 'config.json'), 'utf8')) as { torch_dtype: string };
      expect(cfg.torch_dtype).toBe('float16');
      const share = statSync(path.join(models, d, 'model.safetensors')).size / targetBytes;
      expect(share).toBeGreaterThan(0.05);
      expect(share).toBeLessThan(0.1);
      const draft = await loadModel(path.join(models, d));
      // Loading a decoder checks that the vocabularies match token for token.
      const dec = await SpeculativeDecoder.load({ target, draft });
      await dec.dispose();
      draft.dispose();
    }
    target.dispose();
  });

  it.skipIf(!existsSync(gsm8kTest))('models/README.md: the GSM8K expected-acceptance row of draft-kd-t1.5 reproduces', async () => {
    const t = await evalAlignment({
      target: path.join(models, 'target'), drafts: [path.join(models, 'draft-kd-t1.5')], data: gsm8kTest, windows: 64,
    });
    const readme = readFileSync(path.join(models, 'README.md'), 'utf8');
    const row = t.rows[0]!.acceptance.map((a, i) => `${a.toFixed(3)} ± ${t.rows[0]!.halfWidth[i]!.toFixed(3)}`).join(' | ');
    expect(readme).toContain(`| draft-kd-t1.5 | ${row} |`);
  }, 60_000);
});
