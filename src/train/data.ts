/**
 * Training data: documents tokenized into one stream (BOS doc EOS BOS doc EOS ...), a
 * held-out split, and batches of windows drawn deterministically from (seed, step), so
 * that a resumed run sees exactly the batches it would have seen.
 */
import { SpeculaError } from '../errors.js';
import { documentText, loadDataset, promptText, type Dataset } from '../data/dataset.js';
import type { Tokenizer } from '../model/tokenizer.js';

/** A 32-bit hash of integers (murmur3's finalizer over a running mix): the batch sampler's randomness. */
export function hash32(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h ^ Math.floor(x / 4294967296), 0xc2b2ae35);
    h ^= h >>> 16;
  }
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A uniform integer in [0, n) from (seed, ...keys); n < 2^32. */
export function pick(n: number, ...keys: number[]): number {
  return Math.floor((hash32(...keys) / 4294967296) * n);
}

/** The token ids of one document: BOS (when the tokenizer has one), the text, the first EOS. */
export function documentTokens(tok: Tokenizer, text: string): Int32Array {
  const body = tok.encode(text, { addSpecialTokens: false });
  const bos = tok.bosTokenId !== null ? 1 : 0;
  const eos = tok.eosTokenIds.length > 0 ? 1 : 0;
  const out = new Int32Array(bos + body.length + eos);
  if (bos) out[0] = tok.bosTokenId!;
  out.set(body, bos);
  if (eos) out[out.length - 1] = tok.eosTokenIds[0]!;
  return out;
}

export interface Corpus {
  dataset: Dataset;
  /** The training documents' tokens, concatenated. */
  train: Int32Array;
  /** The held-out documents' tokens (the last ones of the file), concatenated. */
  heldOut: Int32Array;
  /** Documents in each split. */
  trainDocs: number;
  heldOutDocs: number;
  /** The training documents' prompts (promptText), for generated data sources. */
  prompts: string[];
}

/**
 * Loads a corpus file (loadDataset shapes), holds out the last `heldOutFraction` of its
 * documents (at least 1 when there are 2 or more), and tokenizes both parts.
 */
export function loadCorpus(file: string, tok: Tokenizer, seqLen: number, heldOutFraction = 0.02): Corpus {
  const dataset = loadDataset(file, { kind: 'documents' });
  const docs = dataset.records.map((r) => documentText(r, dataset.shape));
  const nHeld = docs.length >= 2 ? Math.max(1, Math.round(docs.length * heldOutFraction)) : 0;
  const trainDocs = docs.slice(0, docs.length - nHeld);
  const heldDocs = docs.slice(docs.length - nHeld);
  const cat = (list: string[]) => {
    const parts = list.map((d) => documentTokens(tok, d));
    const out = new Int32Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  };
  const train = cat(trainDocs);
  if (train.length < seqLen + 1) {
    throw new SpeculaError('E_VALUE', `${file}: the training part has ${train.length} tokens, fewer than seqLen + 1 = ${seqLen + 1}`);
  }
  const prompts = dataset.records.slice(0, trainDocs.length).map((r) => promptText(r, dataset.shape));
  return { dataset, train, heldOut: cat(heldDocs), trainDocs: trainDocs.length, heldOutDocs: nHeld, prompts };
}

export interface Batch {
  /** [batch * seqLen] inputs. */
  tokens: Int32Array;
  /** [batch * seqLen] next tokens, -1 where no target counts. */
  targets: Int32Array;
}

/** `batch` windows of seqLen + 1 tokens at positions drawn from (seed, step, b). */
export function windowBatch(stream: Int32Array, batch: number, seqLen: number, seed: number, step: number): Batch {
  const tokens = new Int32Array(batch * seqLen), targets = new Int32Array(batch * seqLen);
  const span = stream.length - seqLen;
  for (let b = 0; b < batch; ++b) {
    const o = pick(span, seed, step, b, 0x51);
    tokens.set(stream.subarray(o, o + seqLen), b * seqLen);
    targets.set(stream.subarray(o + 1, o + seqLen + 1), b * seqLen);
  }
  return { tokens, targets };
}

/**
 * Consecutive non-overlapping windows of a held-out stream (at most `max`), batched:
 * every evaluation sees the same tokens.
 */
export function heldOutBatches(stream: Int32Array, batch: number, seqLen: number, max: number): Batch[] {
  const out: Batch[] = [];
  const windows = Math.min(max, Math.floor((stream.length - 1) / seqLen));
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const n = Math.min(batch, windows - w0);
    const tokens = new Int32Array(n * seqLen), targets = new Int32Array(n * seqLen);
    for (let b = 0; b < n; ++b) {
      const o = (w0 + b) * seqLen;
      tokens.set(stream.subarray(o, o + seqLen), b * seqLen);
      targets.set(stream.subarray(o + 1, o + seqLen + 1), b * seqLen);
    }
    out.push({ tokens, targets });
  }
  return out;
}
