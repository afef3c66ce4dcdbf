// Tokenizers: the byte-level tokenizer.json that initModel writes and a hand-built
// byte-level BPE (merges written out below, expected ids worked out by hand) round-trip
// text, including multi-byte characters; special ids come from config.json or
// tokenizer_config.json. (Test 4 of the model-runtime issue.)
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SpeculaError, Tokenizer, initModel, loadModel } from '../src/index.js';
import { byteTokenizerJson } from '../src/model/tokenizer.js';

const TEXTS = [
  'Hello, world!',
  'naïve café — déjà vu',
  'Ελληνικά, русский, עברית, العربية',
  '日本語のテキスト、中文，한국어',
  'emoji 🦙🚀 and a ZWJ family 👨‍👩‍👧 and a flag 🇳🇴',
  'math 𝔸 ∀x∈ℝ: x² ≥ 0',
  '  leading, trailing  and\ttabs\nnewlines\r\n',
  '',
];

describe('byte-level tokenizer (initModel)', () => {
  const b = byteTokenizerJson();
  const tok = new Tokenizer(b.json, b.config, { bosTokenId: 256, eosTokenIds: [257] });

  it('encodes UTF-8 bytes after BOS and decodes back exactly', () => {
    for (const text of TEXTS) {
      const ids = tok.encode(text);
      const bytes = new TextEncoder().encode(text);
      expect(Array.from(ids)).toEqual([256, ...bytes]);
      expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(text);
      expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).toBe(text);
    }
  });

  it('keeps special tokens unless asked, and drops ids it does not know', () => {
    expect(tok.decode([256, 104, 105, 257])).toBe('<s>hi</s>');
    expect(tok.decode([256, 104, 105, 257], { skipSpecialTokens: true })).toBe('hi');
    expect(tok.decode([104, 5000, 105])).toBe('hi');
    expect(tok.size).toBe(258);
    expect(() => tok.decode([1.5])).toThrow(SpeculaError);
  });

  it('is what loadModel gives for an initModel directory', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'specula-tok-'));
    try {
      await initModel(dir, { config: 'tiny', seed: 1 });
      const model = await loadModel(dir);
      for (const text of TEXTS) expect(model.tokenizer.decode(model.tokenizer.encode(text), { skipSpecialTokens: true })).toBe(text);
      expect(model.tokenizer.bosTokenId).toBe(256);
      model.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('hand-built byte-level BPE tokenizer.json', () => {
  // Byte-level BPE as GPT-2 defines it: bytes map to printable characters (space -> Ġ,
  // 0xC3 -> Ã, 0xA9 -> ©), the GPT-2 regex splits words, then merges apply by rank.
  const base = byteTokenizerJson().json as { model: { vocab: Record<string, number> } };
  const vocab: Record<string, number> = { ...base.model.vocab };
  const merges = ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'Ġw o', 'r l', 'Ġwo rl', 'Ġworl d', 'Ã ©', 'c a', 'ca f', 'caf Ã©'];
  let next = 256;
  for (const m of merges) vocab[m.replace(' ', '')] = next++;
  vocab['<|endoftext|>'] = next;
  const json = {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: next, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges,
    },
  };
  const tok = new Tokenizer(json, { eos_token: { content: '<|endoftext|>' }, clean_up_tokenization_spaces: false });

  it('applies the merges by rank (ids worked out by hand)', () => {
    // "hello" -> h e l l o -> he l l o -> he ll o -> hell o -> hello (merge 3 = id 259)
    // " world" -> Ġ w o r l d -> Ġw o r l d -> Ġwo r l d -> Ġwo rl d -> Ġworl d -> Ġworld (id 264)
    expect(Array.from(tok.encode('hello world'))).toEqual([259, 264]);
    // "café" = c a f 0xC3 0xA9 -> ca f Ã© -> caf Ã© -> café (id 268)
    expect(Array.from(tok.encode('café'))).toEqual([268]);
    // Unmerged bytes stay bytes: "hi!" -> h i ! (ids 'h' = 71, 'i' = 72, '!' = 0 in GPT-2's byte order)
    expect(Array.from(tok.encode('hi!'))).toEqual([vocab.h, vocab.i, vocab['!']]);
    expect(tok.eosTokenIds).toEqual([269]);
  });

  it('round-trips text with multi-byte characters', () => {
    for (const text of TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode([259, 264, 269])).toBe('hello world<|endoftext|>');
    expect(tok.decode([259, 264, 269], { skipSpecialTokens: true })).toBe('hello world');
  });

  it('rejects a tokenizer.json without a model', () => {
    expect(() => new Tokenizer({ version: '1.0' })).toThrow(SpeculaError);
  });
});

afterAll(() => {});
