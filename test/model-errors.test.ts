// Bad input to the model loader and the model/cache API: never a crash, always a
// SpeculaError with a fitting code and a message naming the file (and the tensor, where
// one is at fault). Ends with a seeded fuzz of >= 10,000 mutated safetensors files.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpeculaError, initModel, loadModel } from '../src/index.js';

const CODES = ['E_ARG', 'E_SHAPE', 'E_VALUE', 'E_FORMAT', 'E_IO', 'E_UNSUPPORTED', 'E_STATE'];

const dirs: string[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'specula-test-'));
  dirs.push(d);
  return d;
}

let base = '';
/** A fresh copy of the tiny model directory. */
function copyBase(): string {
  const d = tmpDir();
  fs.cpSync(base, d, { recursive: true });
  return d;
}

beforeAll(async () => {
  base = tmpDir();
  await initModel(base, { config: 'tiny', seed: 1 });
});

afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** The error a promise (or a function's result) rejects or throws with. */
async function caught(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

async function expectError(fn: () => unknown, code: string, ...parts: string[]): Promise<SpeculaError> {
  const err = await caught(fn);
  expect(err, `expected a SpeculaError ${code}, got ${String(err)}`).toBeInstanceOf(SpeculaError);
  const e = err as SpeculaError;
  expect(e.code, e.message).toBe(code);
  for (const p of parts) expect(e.message).toContain(p);
  return e;
}

// ---- safetensors files: read, edit, write -------------------------------------------------

interface Entry { dtype: unknown; shape: unknown; data_offsets: unknown }
type Header = Record<string, unknown>;

function readST(file: string): { header: Header; data: Buffer } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Header, data: buf.subarray(8 + n) };
}

function stBytes(header: unknown, data: Uint8Array, pad = 0): Buffer {
  let json = JSON.stringify(header);
  if (pad > 0) json += ' '.repeat((pad - ((8 + Buffer.byteLength(json)) % pad)) % pad);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([head, Buffer.from(json, 'utf8'), data]);
}

function writeST(file: string, header: unknown, data: Uint8Array, pad = 0): void {
  fs.writeFileSync(file, stBytes(header, data, pad));
}

/** Tensor entries (no __metadata__) in data order. */
function tensorsOf(header: Header): [string, Entry][] {
  return Object.entries(header)
    .filter(([k]) => k !== '__metadata__')
    .map(([k, v]) => [k, v as Entry] as [string, Entry])
    .sort((a, b) => (a[1].data_offsets as number[])[0]! - (b[1].data_offsets as number[])[0]!);
}

/** A consistent file holding `names` from (header, data): contiguous data, fresh offsets. */
function repack(header: Header, data: Buffer, names: string[]): { header: Header; data: Buffer } {
  const out: Header = { __metadata__: { format: 'pt' } };
  const parts: Buffer[] = [];
  let off = 0;
  for (const name of names) {
    const e = header[name] as Entry;
    const [b, end] = e.data_offsets as [number, number];
    out[name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + end - b] };
    parts.push(data.subarray(b, end));
    off += end - b;
  }
  return { header: out, data: Buffer.concat(parts) };
}

const Q = 'model.layers.0.self_attn.q_proj.weight';
const K = 'model.layers.0.self_attn.k_proj.weight';
const V = 'model.layers.1.self_attn.v_proj.weight';

describe('loadModel: the directory', () => {
  it('missing directory', async () => {
    const d = path.join(tmpDir(), 'no-such-model');
    await expectError(() => loadModel(d), 'E_IO', d, 'no such directory');
  });

  it('a path that is a file', async () => {
    const f = path.join(base, 'config.json');
    await expectError(() => loadModel(f), 'E_IO', f, 'not a directory');
  });

  it('missing config.json', async () => {
    const d = copyBase();
    fs.rmSync(path.join(d, 'config.json'));
    await expectError(() => loadModel(d), 'E_IO', path.join(d, 'config.json'), 'ENOENT');
  });

  it('missing model.safetensors (and no index)', async () => {
    const d = copyBase();
    fs.rmSync(path.join(d, 'model.safetensors'));
    await expectError(() => loadModel(d), 'E_IO', d, 'model.safetensors', 'model.safetensors.index.json');
  });

  it('bad arguments', async () => {
    await expectError(() => loadModel(''), 'E_ARG', 'dir');
    await expectError(() => loadModel(base, { context: 8 } as never), 'E_ARG', 'opts.context');
  });

  it('model.safetensors is a directory', async () => {
    // Found by this test: readSafetensors opened the directory and its readSync threw a
    // plain Node Error (EISDIR), not a SpeculaError.
    const d = copyBase();
    const f = path.join(d, 'model.safetensors');
    fs.rmSync(f);
    fs.mkdirSync(f);
    await expectError(() => loadModel(d), 'E_IO', f);
  });

  it('model.safetensors is a FIFO: E_IO, not a hang', () => {
    // Found while writing these tests: opening a FIFO blocks until a writer appears. Run in
    // a child process with a time limit, so that a regression fails instead of hanging.
    const d = copyBase();
    const f = path.join(d, 'model.safetensors');
    fs.rmSync(f);
    execFileSync('mkfifo', [f]);
    const entry = path.resolve('dist/index.js');
    const code = `import('${entry}').then((m) => m.loadModel(${JSON.stringify(d)})).then(() => console.log('loaded'), (e) => console.log(e.code, e.message));`;
    const out = execFileSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 20_000 });
    expect(out).toContain('E_IO');
    expect(out).toContain('not a regular file');
  });

  it('missing tokenizer.json', async () => {
    const d = copyBase();
    fs.rmSync(path.join(d, 'tokenizer.json'));
    await expectError(() => loadModel(d), 'E_IO', d, 'tokenizer.json');
  });
});

describe('loadModel: config.json', () => {
  function withConfig(edit: (c: Record<string, unknown>) => void): string {
    const d = copyBase();
    const file = path.join(d, 'config.json');
    const c = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    edit(c);
    fs.writeFileSync(file, JSON.stringify(c));
    return d;
  }

  it('not JSON', async () => {
    const d = copyBase();
    fs.writeFileSync(path.join(d, 'config.json'), '{"architectures": ["LlamaForCausalLM"], hidden_size: 64');
    await expectError(() => loadModel(d), 'E_FORMAT', path.join(d, 'config.json'), 'not valid JSON');
  });

  it('a required field missing', async () => {
    for (const field of ['hidden_size', 'vocab_size', 'num_hidden_layers', 'architectures']) {
      const d = withConfig((c) => delete c[field]);
      await expectError(() => loadModel(d), 'E_FORMAT', path.join(d, 'config.json'), field);
    }
  });

  it('a field of the wrong type', async () => {
    const d = withConfig((c) => (c.hidden_size = '64'));
    await expectError(() => loadModel(d), 'E_FORMAT', path.join(d, 'config.json'), 'hidden_size');
  });

  it('unknown architecture', async () => {
    const d = withConfig((c) => (c.architectures = ['GPT2LMHeadModel']));
    await expectError(() => loadModel(d), 'E_UNSUPPORTED', path.join(d, 'config.json'), 'GPT2LMHeadModel');
  });

  it('hidden_act "gelu"', async () => {
    const d = withConfig((c) => (c.hidden_act = 'gelu'));
    await expectError(() => loadModel(d), 'E_UNSUPPORTED', path.join(d, 'config.json'), 'hidden_act', 'gelu');
  });

  it('rope_scaling of type "yarn"', async () => {
    const d = withConfig((c) => (c.rope_scaling = { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 512 }));
    await expectError(() => loadModel(d), 'E_UNSUPPORTED', path.join(d, 'config.json'), 'rope_scaling', 'yarn');
  });

  it('a sliding window shorter than the context', async () => {
    // Mistral windows attention when sliding_window is set; the runtime attends over the
    // whole context, so it refuses unless the context fits in the window.
    const d = withConfig((c) => {
      c.architectures = ['MistralForCausalLM'];
      c.sliding_window = 64;
    });
    await expectError(() => loadModel(d), 'E_UNSUPPORTED', path.join(d, 'config.json'), 'sliding_window', '64');
    const m = await loadModel(d, { contextLength: 64 });
    expect(m.contextLength).toBe(64);
    m.dispose();
    // Qwen2 windows only with use_sliding_window: this one passes the config checks and
    // stops at the tensors (the base weights have no q/k/v biases).
    const q = withConfig((c) => {
      c.architectures = ['Qwen2ForCausalLM'];
      c.sliding_window = 64;
      c.use_sliding_window = false;
    });
    await expectError(() => loadModel(q), 'E_FORMAT', 'q_proj.bias');
  });
});

describe('loadModel: model.safetensors', () => {
  /** A copy of the base model whose model.safetensors is `bytes`; returns [dir, file]. */
  function withFile(bytes: Uint8Array): [string, string] {
    const d = copyBase();
    const f = path.join(d, 'model.safetensors');
    fs.writeFileSync(f, bytes);
    return [d, f];
  }
  function edited(edit: (h: Header, data: Buffer) => unknown): [string, string] {
    const { header, data } = readST(path.join(base, 'model.safetensors'));
    const out = edit(header, data);
    return withFile(stBytes(header, Buffer.isBuffer(out) ? out : data, 64));
  }

  it('header length beyond the file', async () => {
    const buf = Buffer.from(fs.readFileSync(path.join(base, 'model.safetensors')));
    buf.writeBigUInt64LE(BigInt(buf.length));
    const [d, f] = withFile(buf);
    await expectError(() => loadModel(d), 'E_FORMAT', f, 'runs past the end of the file');
  });

  it('file shorter than the 8-byte length', async () => {
    const [d, f] = withFile(Buffer.from([1, 2, 3]));
    await expectError(() => loadModel(d), 'E_FORMAT', f, 'at least 8 bytes');
  });

  it('header not JSON', async () => {
    const buf = Buffer.from(fs.readFileSync(path.join(base, 'model.safetensors')));
    const n = Number(buf.readBigUInt64LE(0));
    buf.fill('x'.charCodeAt(0), 8, 8 + n);
    const [d, f] = withFile(buf);
    await expectError(() => loadModel(d), 'E_FORMAT', f, 'not valid UTF-8 JSON');
  });

  it('header not UTF-8', async () => {
    const buf = Buffer.from(fs.readFileSync(path.join(base, 'model.safetensors')));
    buf[10] = 0xff;  // inside the first key's quotes
    const [d, f] = withFile(buf);
    await expectError(() => loadModel(d), 'E_FORMAT', f, 'not valid UTF-8 JSON');
  });

  it('header not a JSON object', async () => {
    const [d, f] = withFile(stBytes([1, 2, 3], Buffer.alloc(16)));
    await expectError(() => loadModel(d), 'E_FORMAT', f, 'not a JSON object');
  });

  it('header length over 100 MB', async () => {
    const buf = Buffer.alloc(8 + 16, 0x20);
    buf.writeBigUInt64LE(200_000_000n);
    const [d, f] = withFile(buf);
    await expectError(() => loadModel(d), 'E_FORMAT', f, '200000000', '100 MB');
  });

  it('data_offsets out of range', async () => {
    const [d, f] = edited((h, data) => {
      const e = h[K] as Entry;
      const [b, end] = e.data_offsets as number[];
      e.data_offsets = [data.length - (end! - b!) + 4, data.length + 4];
    });
    await expectError(() => loadModel(d), 'E_FORMAT', f, `tensor "${K}"`, 'data_offsets', 'outside');
  });

  it('data_offsets not [begin, end] integers', async () => {
    for (const bad of [[0], [-4, 0], [0.5, 4], ['0', '4'], null]) {
      const [d, f] = edited((h) => ((h[K] as Entry).data_offsets = bad));
      await expectError(() => loadModel(d), 'E_FORMAT', f, `tensor "${K}"`, 'data_offsets');
    }
  });

  it('two tensors overlapping', async () => {
    // k_proj and v_proj have the same shape: point v at k's bytes.
    const K1 = 'model.layers.1.self_attn.k_proj.weight';
    const [d, f] = edited((h) => ((h[V] as Entry).data_offsets = [...((h[K1] as Entry).data_offsets as number[])]));
    await expectError(() => loadModel(d), 'E_FORMAT', f, K1, V, 'overlap');
    // Partial overlap: shift one tensor's range by a few bytes into the next one.
    const [d2, f2] = edited((h) => {
      const [first] = tensorsOf(h);
      const [b, e] = first![1].data_offsets as number[];
      first![1].data_offsets = [b! + 8, e! + 8];
    });
    const [first, second] = tensorsOf(readST(path.join(base, 'model.safetensors')).header);
    await expectError(() => loadModel(d2), 'E_FORMAT', f2, first![0], second![0], 'overlap');
  });

  it('byte count disagrees with dtype and shape', async () => {
    const [d, f] = edited((h) => ((h[K] as Entry).shape = [32, 63]));
    await expectError(() => loadModel(d), 'E_FORMAT', f, `tensor "${K}"`, 'needs');
  });

  it('a tensor shape that disagrees with config.json', async () => {
    // Same byte count, wrong shape: q_proj [64, 64] -> [128, 32], k_proj [32, 64] -> [64, 32].
    for (const [name, shape] of [[Q, [128, 32]], [K, [64, 32]]] as const) {
      const [d, f] = edited((h) => ((h[name] as Entry).shape = [...shape]));
      await expectError(() => loadModel(d), 'E_SHAPE', f, `tensor "${name}"`, `[${shape.join(', ')}]`);
    }
  });

  it('a missing tensor', async () => {
    const { header, data } = readST(path.join(base, 'model.safetensors'));
    for (const gone of ['model.norm.weight', K, 'lm_head.weight']) {
      const keep = tensorsOf(header).map(([n]) => n).filter((n) => n !== gone);
      const r = repack(header, data, keep);
      const [d, f] = withFile(stBytes(r.header, r.data, 64));
      await expectError(() => loadModel(d), 'E_FORMAT', f, `tensor "${gone}"`, 'missing');
    }
  });

  it('an unsupported dtype', async () => {
    for (const [dtype, shape] of [['I32', [32, 64]], ['F64', [16, 64]], ['I8', [128, 64]]] as const) {
      const [d, f] = edited((h) => Object.assign(h[K] as Entry, { dtype, shape: [...shape] }));
      await expectError(() => loadModel(d), 'E_UNSUPPORTED', f, `tensor "${K}"`, dtype);
    }
  });

  it('an unknown dtype', async () => {
    const [d, f] = edited((h) => ((h[K] as Entry).dtype = 'F12'));
    await expectError(() => loadModel(d), 'E_FORMAT', f, `tensor "${K}"`, 'F12');
  });

  it('a tensor entry that is not an object', async () => {
    const [d, f] = edited((h) => (h[K] = [1, 2]));
    await expectError(() => loadModel(d), 'E_FORMAT', f, `tensor "${K}"`);
  });

  it('extra tensors and metadata are ignored', async () => {
    const [d] = edited((h, data) => {
      h['model.extra.weight'] = { dtype: 'I64', shape: [2], data_offsets: [data.length, data.length + 16] };
      h.__metadata__ = { format: 'pt', note: 'hello' };
      return Buffer.concat([data, Buffer.alloc(16)]);
    });
    const m = await loadModel(d);
    expect((await m.logits([1, 2])).length).toBe(2 * 320);
    m.dispose();
  });
});

describe('loadModel: sharded weights', () => {
  const SHARD1 = 'model-00001-of-00002.safetensors';
  const SHARD2 = 'model-00002-of-00002.safetensors';

  /** A copy of the base model split into two shards with an index; returns the dir and the weight map. */
  function sharded(): { d: string; map: Record<string, string>; names: [string[], string[]] } {
    const d = copyBase();
    const { header, data } = readST(path.join(d, 'model.safetensors'));
    const names = tensorsOf(header).map(([n]) => n);
    const half = Math.ceil(names.length / 2);
    const parts: [string[], string[]] = [names.slice(0, half), names.slice(half)];
    const map: Record<string, string> = {};
    parts.forEach((ns, i) => {
      const file = i === 0 ? SHARD1 : SHARD2;
      const r = repack(header, data, ns);
      writeST(path.join(d, file), r.header, r.data, 64);
      for (const n of ns) map[n] = file;
    });
    fs.rmSync(path.join(d, 'model.safetensors'));
    fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
    return { d, map, names: parts };
  }

  it('the index names a file that does not exist', async () => {
    const d = copyBase();
    const { header } = readST(path.join(d, 'model.safetensors'));
    const map = Object.fromEntries(tensorsOf(header).map(([n]) => [n, 'model.safetensors']));
    map[K] = SHARD2;
    const index = path.join(d, 'model.safetensors.index.json');
    fs.writeFileSync(index, JSON.stringify({ metadata: {}, weight_map: map }));
    await expectError(() => loadModel(d), 'E_IO', index, SHARD2, 'missing');
  });

  it('a weight_map entry pointing to a file that does not hold the tensor', async () => {
    const { d, map, names } = sharded();
    const t = names[0][0]!;
    map[t] = SHARD2;
    const index = path.join(d, 'model.safetensors.index.json');
    fs.writeFileSync(index, JSON.stringify({ metadata: {}, weight_map: map }));
    await expectError(() => loadModel(d), 'E_FORMAT', index, `"${t}"`, SHARD2, 'does not hold');
  });

  it('a malformed index', async () => {
    const { d } = sharded();
    const index = path.join(d, 'model.safetensors.index.json');
    fs.writeFileSync(index, '{"weight_map": ');
    await expectError(() => loadModel(d), 'E_FORMAT', index, 'not valid JSON');
    fs.writeFileSync(index, JSON.stringify({ metadata: {} }));
    await expectError(() => loadModel(d), 'E_FORMAT', index, 'weight_map');
    fs.writeFileSync(index, JSON.stringify({ weight_map: { [K]: '../model.safetensors' } }));
    await expectError(() => loadModel(d), 'E_FORMAT', index, `weight_map["${K}"]`);
  });

  it('a weight_map entry naming no file', async () => {
    // Found by this test: '' passes the file-name check ('.' and '..' do not), and
    // path.join(dir, '') is the directory itself: readSync throws a plain Node Error
    // (EISDIR) instead of a SpeculaError.
    const { d, map } = sharded();
    const index = path.join(d, 'model.safetensors.index.json');
    fs.writeFileSync(index, JSON.stringify({ metadata: {}, weight_map: { ...map, [K]: '' } }));
    await expectError(() => loadModel(d), 'E_FORMAT', index, `weight_map["${K}"]`);
  });

  it('a weight_map entry naming a directory', async () => {
    // Found by this test: a plain Node Error (EISDIR), as for model.safetensors as a directory.
    const { d, map } = sharded();
    const index = path.join(d, 'model.safetensors.index.json');
    fs.mkdirSync(path.join(d, 'sub'));
    fs.writeFileSync(index, JSON.stringify({ metadata: {}, weight_map: { ...map, [K]: 'sub' } }));
    await expectError(() => loadModel(d), 'E_IO', path.join(d, 'sub'));
  });

  it('an empty weight_map', async () => {
    // Found by this test: the error said 'tensor "model.embed_tokens.weight" is missing
    // (looked in )', naming no file at all; it must name the index it read.
    const { d } = sharded();
    const index = path.join(d, 'model.safetensors.index.json');
    fs.writeFileSync(index, JSON.stringify({ metadata: {}, weight_map: {} }));
    await expectError(() => loadModel(d), 'E_FORMAT', 'weight_map', index);
  });

  it('a shard missing a tensor names the tensor', async () => {
    const { d, map } = sharded();
    const gone = 'model.norm.weight';
    const file = path.join(d, map[gone]!);
    const { header, data } = readST(file);
    const r = repack(header, data, tensorsOf(header).map(([n]) => n).filter((n) => n !== gone));
    writeST(file, r.header, r.data, 64);
    delete map[gone];
    fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
    await expectError(() => loadModel(d), 'E_FORMAT', `tensor "${gone}"`, 'missing', SHARD1, SHARD2);
  });

  it('a tensor in two shards', async () => {
    const { d, map, names } = sharded();
    // Append a copy of a shard-1 tensor to shard 2.
    const t = names[0][0]!;
    const one = readST(path.join(d, SHARD1));
    const two = readST(path.join(d, SHARD2));
    const [b, e] = (one.header[t] as Entry).data_offsets as number[];
    two.header[t] = { ...(one.header[t] as Entry), data_offsets: [two.data.length, two.data.length + e! - b!] };
    writeST(path.join(d, SHARD2), two.header, Buffer.concat([two.data, one.data.subarray(b, e)]), 64);
    expect(map[t]).toBe(SHARD1);
    await expectError(() => loadModel(d), 'E_FORMAT', `"${t}"`, 'twice', SHARD1, SHARD2);
  });

  it('two valid shards give exactly the single-file logits', async () => {
    const { d } = sharded();
    expect(fs.existsSync(path.join(d, 'model.safetensors'))).toBe(false);
    const single = await loadModel(base);
    const split = await loadModel(d);
    try {
      const tokens = [256, 72, 105];
      const a = await single.logits(tokens);
      const b = await split.logits(tokens);
      expect(a.length).toBe(3 * 320);
      expect(b.length).toBe(a.length);
      expect(a.every(Number.isFinite)).toBe(true);
      let differ = 0;
      for (let i = 0; i < a.length; ++i) if (a[i] !== b[i]) ++differ;
      expect(differ).toBe(0);
    } finally {
      single.dispose();
      split.dispose();
    }
  });
});

describe('model and cache: bad calls', () => {
  it('token ids out of range', async () => {
    const m = await loadModel(base);
    try {
      await expectError(() => m.logits([5000]), 'E_VALUE', 'tokens[0]', '[0, 319]', '5000');
      await expectError(() => m.logits([1, -1]), 'E_VALUE', 'tokens[1]', '-1');
      await expectError(() => m.logits([1.5]), 'E_VALUE', 'tokens[0]', '1.5');
      await expectError(() => m.logits(Int32Array.of(1, 320)), 'E_VALUE', '320');
      await expectError(() => m.logits(Int32Array.of(-7)), 'E_VALUE', '-7');
      await expectError(() => m.logits([]), 'E_SHAPE', 'tokens', 'at least one token');
      await expectError(() => m.logits('abc' as never), 'E_ARG', 'tokens');
      const c = m.createCache({ sequences: 1, capacity: 8 });
      await expectError(() => c.forward([{ seq: 0, tokens: [3, 400] }]), 'E_VALUE', 'items[0].tokens[1]', '400');
      expect(c.length(0)).toBe(0);
      c.dispose();
    } finally {
      m.dispose();
    }
  });

  it('a sequence longer than the context', async () => {
    const m = await loadModel(base, { contextLength: 8 });
    try {
      expect(m.contextLength).toBe(8);
      expect((await m.logits([1, 2, 3, 4, 5, 6, 7, 8])).length).toBe(8 * 320);
      await expectError(() => m.logits([1, 2, 3, 4, 5, 6, 7, 8, 9]), 'E_SHAPE', '9 tokens', 'context length 8');
    } finally {
      m.dispose();
    }
    await expectError(() => loadModel(base, { contextLength: 513 }), 'E_VALUE', 'contextLength', '512');
    await expectError(() => loadModel(base, { contextLength: 0 }), 'E_VALUE', 'contextLength');
  });

  it('cache capacity exceeded leaves the cache unchanged', async () => {
    const m = await loadModel(base);
    const c = m.createCache({ sequences: 2, capacity: 4 });
    try {
      await expectError(() => c.forward([{ seq: 0, tokens: [1, 2, 3, 4, 5] }]), 'E_SHAPE', 'items[0]', 'grow to 5', 'capacity 4');
      expect(c.length(0)).toBe(0);
      await c.forward([{ seq: 0, tokens: [1, 2, 3] }], {});
      await expectError(() => c.forward([{ seq: 1, tokens: [1] }, { seq: 0, tokens: [4, 5] }]), 'E_SHAPE', 'items[1]', 'grow to 5', 'capacity 4');
      expect(c.length(0)).toBe(3);
      expect(c.length(1)).toBe(0);
    } finally {
      c.dispose();
      m.dispose();
    }
  });

  it('createCache with capacity above the context length', async () => {
    const m = await loadModel(base, { contextLength: 16 });
    try {
      await expectError(() => m.createCache({ sequences: 1, capacity: 17 }), 'E_VALUE', 'capacity', '16', '17');
      await expectError(() => m.createCache({ sequences: 0, capacity: 4 }), 'E_VALUE', 'sequences');
    } finally {
      m.dispose();
    }
  });

  it('the same seq twice in one forward call', async () => {
    const m = await loadModel(base);
    const c = m.createCache({ sequences: 2, capacity: 8 });
    try {
      await expectError(() => c.forward([{ seq: 0, tokens: [1] }, { seq: 0, tokens: [2] }]), 'E_ARG', 'items[1].seq', 'twice');
      expect(c.length(0)).toBe(0);
    } finally {
      c.dispose();
      m.dispose();
    }
  });

  it('truncate beyond the current length', async () => {
    const m = await loadModel(base);
    const c = m.createCache({ sequences: 1, capacity: 8 });
    try {
      await c.forward([{ seq: 0, tokens: [1, 2, 3], logits: 'none' }]);
      await expectError(() => c.truncate(0, 5), 'E_VALUE', 'length', '3', '5');
      await expectError(() => c.truncate(0, 9), 'E_VALUE', 'length', '9');
      await expectError(() => c.truncate(1, 0), 'E_VALUE', 'seq');
      expect(c.length(0)).toBe(3);
      c.truncate(0, 1);
      expect(c.length(0)).toBe(1);
    } finally {
      c.dispose();
      m.dispose();
    }
  });

  it('any call after dispose()', async () => {
    const m = await loadModel(base);
    const c = m.createCache({ sequences: 1, capacity: 8 });
    const c2 = m.createCache({ sequences: 1, capacity: 8 });
    m.dispose();
    m.dispose();  // twice is fine
    await expectError(() => m.logits([1, 2]), 'E_STATE', 'disposed');
    await expectError(() => m.createCache({ sequences: 1, capacity: 4 }), 'E_STATE', 'disposed');
    // Caches outlive the model handle.
    expect((await c2.forward([{ seq: 0, tokens: [1, 2] }])).length).toBe(320);
    c.dispose();
    c.dispose();
    await expectError(() => c.forward([{ seq: 0, tokens: [1] }]), 'E_STATE', 'disposed');
    await expectError(() => c.length(0), 'E_STATE', 'disposed');
    await expectError(() => c.truncate(0, 0), 'E_STATE', 'disposed');
    await expectError(() => c.reset(), 'E_STATE', 'disposed');
    await expectError(() => c.bytes, 'E_STATE', 'disposed');
    c2.dispose();
  });

  it('a second forward while one is still running', async () => {
    const m = await loadModel(base);
    const c = m.createCache({ sequences: 2, capacity: 64 });
    try {
      const first = c.forward([{ seq: 0, tokens: Array.from({ length: 48 }, (_, i) => i), logits: 'all' }]);
      await expectError(() => c.forward([{ seq: 1, tokens: [1] }]), 'E_STATE', 'still running');
      await expectError(() => c.length(0), 'E_STATE', 'still running');
      await expectError(() => c.truncate(0, 0), 'E_STATE', 'still running');
      expect((await first).length).toBe(48 * 320);
      expect(c.length(0)).toBe(48);
      expect(c.length(1)).toBe(0);
    } finally {
      c.dispose();
      m.dispose();
    }
  });
});

// ---- fuzz ---------------------------------------------------------------------------------

/** xorshift32 with a fixed seed: the same mutations on every run. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  u32(): number {
    let x = this.#s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return this.#s;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

const WEIRD_NUMBERS: unknown[] = [
  -1, -4096, 0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 4096, 1.5, 0.5, 1e-9, 2 ** 31, 2 ** 32, 2 ** 32 + 8, 2 ** 53 - 1,
  2 ** 53, 2 ** 53 + 2, 2 ** 63, 2 ** 64, 1e300, -0, Number.MAX_VALUE, '8', null, true, [], {}, 'x',
];
const DTYPES: unknown[] = ['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'I16', 'I8', 'U8', 'U16', 'U32', 'U64', 'BOOL',
  'F8_E4M3', 'F8_E5M2', 'f16', 'F12', '', 'F16 ', 4, null, ['F16'], { dtype: 'F16' }];
const NAMES = ['__proto__', 'constructor', 'toString', '', '__metadata__', 'model.norm.weight', 'lm_head.weight',
  'model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight', 'model.layers.1.mlp.up_proj.weight',
  '\u0000', '\ud800', 'model.norm.weight\u0000', 'é'];

function randomNumber(r: Rng, around: number): unknown {
  switch (r.int(4)) {
    case 0: return r.pick(WEIRD_NUMBERS);
    case 1: return around + r.int(33) - 16;
    case 2: return r.int(1 << 20);
    default: return around * r.pick([2, 0.5, -1, 1 / 3, 1e6]);
  }
}

/** One structure-aware edit of a parsed header; returns the new header (maybe not an object). */
function editHeader(r: Rng, h: Record<string, unknown>): unknown {
  const names = Object.keys(h).filter((k) => k !== '__metadata__');
  const name = names.length ? r.pick(names) : 'model.norm.weight';
  const e = h[name];
  const entry = (typeof e === 'object' && e !== null && !Array.isArray(e) ? e : {}) as Record<string, unknown>;
  switch (r.int(14)) {
    case 0:
      entry.dtype = r.pick(DTYPES);
      break;
    case 1: {
      const s = Array.isArray(entry.shape) ? [...entry.shape] : [];
      const i = s.length ? r.int(s.length) : 0;
      s[i] = randomNumber(r, typeof s[i] === 'number' ? (s[i] as number) : 16);
      entry.shape = s;
      break;
    }
    case 2: {
      const s = Array.isArray(entry.shape) ? [...entry.shape] : [];
      if (r.chance(0.5)) s.push(r.pick([1, 0, 2, 16])); else if (r.chance(0.5)) s.pop(); else s.reverse();
      entry.shape = r.chance(0.1) ? r.pick([null, 16, 'x', {}]) : s;
      break;
    }
    case 3: {
      const o = Array.isArray(entry.data_offsets) ? [...entry.data_offsets] : [0, 0];
      const i = r.int(2);
      o[i] = randomNumber(r, typeof o[i] === 'number' ? (o[i] as number) : 0);
      entry.data_offsets = o;
      break;
    }
    case 4: {
      const o = Array.isArray(entry.data_offsets) ? [...entry.data_offsets] : [0, 0];
      const d = r.pick([1, 2, 4, 8, 64, -1, -2, -64]);
      entry.data_offsets = r.chance(0.2) ? [o[0], o[1], o[1]] : r.chance(0.2) ? [o[1]] : [(o[0] as number) + d, (o[1] as number) + d];
      break;
    }
    case 5:
      delete entry[r.pick(['dtype', 'shape', 'data_offsets'])];
      break;
    case 6:
      delete h[name];
      return h;
    case 7:
      h[r.chance(0.5) ? r.pick(NAMES) : `${name}.copy`] = structuredClone(entry);
      return h;
    case 8:
      delete h[name];
      h[r.chance(0.5) ? r.pick(NAMES) : `${name}x`] = entry;
      return h;
    case 9:
      h[name] = r.pick([[], [1, 2], 0, null, 'F16', true]);
      return h;
    case 10:
      return r.pick([[], [entry], 0, null, 'x', true]);
    case 11:
      h.__metadata__ = r.pick([null, [], 1, 'pt', { format: 'pt', x: 1 }, { format: { nested: [1] } }]);
      return h;
    case 12: {
      // Swap the ranges of two tensors (same size: loads with swapped weights).
      const other = h[r.pick(names.length ? names : [name])];
      if (typeof other === 'object' && other !== null && !Array.isArray(other)) {
        const t = entry.data_offsets;
        entry.data_offsets = (other as Record<string, unknown>).data_offsets;
        (other as Record<string, unknown>).data_offsets = t;
      }
      break;
    }
    default: {
      // Harmless: reorder keys.
      const out: Record<string, unknown> = {};
      for (const k of Object.keys(h).reverse()) out[k] = h[k];
      return out;
    }
  }
  if (name in h || r.chance(0.5)) h[name] = entry;
  return h;
}

/** Mutates a safetensors file: several random edits, byte-level and structure-aware. */
function mutate(r: Rng, orig: Buffer): Buffer {
  let buf = Buffer.from(orig);
  const ops = 1 + r.int(3);
  for (let k = 0; k < ops; ++k) {
    const hlen = buf.length >= 8 ? Number(buf.readBigUInt64LE(0)) : 0;
    const headerEnd = Math.min(buf.length, 8 + (hlen <= buf.length ? hlen : 0));
    switch (r.pick([0, 0, 1, 2, 3, 4, 4, 4, 5])) {
      case 0: {
        // Flip bytes, mostly in the header.
        const n = 1 + r.int(4);
        for (let i = 0; i < n && buf.length; ++i) {
          const at = r.chance(0.7) && headerEnd > 0 ? r.int(headerEnd) : r.int(buf.length);
          buf[at] = r.chance(0.5) ? buf[at]! ^ (1 << r.int(8)) : r.int(256);
        }
        break;
      }
      case 1: {
        if (buf.length < 8) break;
        // The 8-byte length: small deltas, random, huge.
        const choice = r.int(5);
        const n = BigInt(hlen);
        const v = choice === 0 ? n + BigInt(r.int(33) - 16)
          : choice === 1 ? BigInt(r.u32()) * BigInt(r.u32())
          : choice === 2 ? BigInt(r.pick([0, 1, 2, 8, 100 * 1024 * 1024, 100 * 1024 * 1024 + 1, buf.length - 8, buf.length - 7, buf.length]))
          : choice === 3 ? r.pick([2n ** 63n, 2n ** 64n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 32n])
          : BigInt(r.u32());
        buf.writeBigUInt64LE(v < 0n ? 0n : v & (2n ** 64n - 1n));
        break;
      }
      case 2: {
        // Truncate: into the length, the header or the data.
        const where = r.int(3);
        const to = where === 0 ? r.int(9) : where === 1 ? r.int(headerEnd + 1) : headerEnd + r.int(Math.max(1, buf.length - headerEnd));
        buf = buf.subarray(0, Math.min(to, buf.length));
        break;
      }
      case 3: {
        const extra = Buffer.alloc(1 + r.int(64));
        for (let i = 0; i < extra.length; ++i) extra[i] = r.int(256);
        buf = Buffer.concat([buf, extra]);
        break;
      }
      case 4: {
        // Structure-aware: parse the header JSON, edit it, write it back.
        let h: unknown;
        try {
          h = JSON.parse(buf.subarray(8, headerEnd).toString('utf8'));
        } catch {
          if (buf.length) {
            const at = r.int(buf.length);
            buf[at] = buf[at]! ^ 0x20;
          }
          break;
        }
        if (typeof h !== 'object' || h === null || Array.isArray(h)) h = {};
        const edits = 1 + r.int(2);
        for (let i = 0; i < edits; ++i) {
          if (typeof h === 'object' && h !== null && !Array.isArray(h)) h = editHeader(r, h as Record<string, unknown>);
        }
        let json = JSON.stringify(h) ?? '';
        if (r.chance(0.1)) json += ' '.repeat(r.int(70));
        if (r.chance(0.05)) json = json.replace(/"model\.norm\.weight"/, '"model.norm.weight","model.norm.weight"');  // invalid
        if (r.chance(0.05) && json.startsWith('{')) json = `{"model.norm.weight":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},${json.slice(1)}`;  // duplicate key
        const jb = Buffer.from(json, 'utf8');
        const head = Buffer.alloc(8);
        const len = r.chance(0.85) ? jb.length : Math.max(0, jb.length + r.int(17) - 8);
        head.writeBigUInt64LE(BigInt(len));
        buf = Buffer.concat([head, jb, buf.subarray(headerEnd)]);
        break;
      }
      default: {
        // Data only: the file still loads (weights become garbage, maybe NaN).
        if (buf.length > headerEnd) {
          for (let i = 0; i < 8; ++i) buf[headerEnd + r.int(buf.length - headerEnd)] = r.int(256);
        }
        break;
      }
    }
  }
  return buf;
}

describe('fuzz: mutated safetensors files', () => {
  it('>= 10,000 mutated files: each loads or rejects with a SpeculaError', async () => {
    const VOCAB = 260;
    const dir = tmpDir();
    await initModel(dir, {
      config: { vocabSize: VOCAB, hiddenSize: 16, intermediateSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8 },
      seed: 1, dtype: 'f16',
    });
    const file = path.join(dir, 'model.safetensors');
    const spare = path.join(dir, 'next.tmp');
    const orig = fs.readFileSync(file);
    // The unmutated file loads.
    const ref = await loadModel(dir);
    expect((await ref.logits([256, 1, 2])).length).toBe(3 * VOCAB);
    ref.dispose();

    const N = 10_000;
    const r = new Rng(0x5eed_2024);
    const counts: Record<string, number> = {};
    const failures: string[] = [];
    const t0 = performance.now();
    for (let i = 0; i < N; ++i) {
      const bytes = mutate(r, orig);
      // A fresh inode each time: a mapping of the previous file is never truncated under it.
      fs.writeFileSync(spare, bytes);
      fs.renameSync(spare, file);
      let outcome: string;
      try {
        const m = await loadModel(dir);
        try {
          const z = await m.logits([256, 1, 2]);
          if (!(z instanceof Float32Array) || z.length !== 3 * VOCAB) {
            failures.push(`#${i}: loaded, but logits gave ${String(z)} of length ${(z as { length?: number })?.length}`);
          }
        } finally {
          m.dispose();
        }
        outcome = 'ok';
      } catch (err) {
        if (err instanceof SpeculaError && CODES.includes(err.code) && err.message.includes(dir)) {
          outcome = err.code;
        } else {
          outcome = 'bad';
          failures.push(`#${i}: ${err instanceof SpeculaError ? err.code : (err as Error)?.name}: ${(err as Error)?.message} `
            + `(file head: ${bytes.subarray(0, 200).toString('base64')})`);
        }
      }
      counts[outcome] = (counts[outcome] ?? 0) + 1;
    }
    const seconds = (performance.now() - t0) / 1000;
    console.log(`fuzz: ${N} files in ${seconds.toFixed(1)} s; outcomes ${JSON.stringify(counts)}`);
    expect(failures.slice(0, 20)).toEqual([]);
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    expect(total).toBeGreaterThanOrEqual(10_000);
    expect(counts.ok ?? 0).toBeGreaterThan(0);
    expect(Object.keys(counts).filter((k) => k !== 'ok' && k !== 'bad').length).toBeGreaterThanOrEqual(3);
  }, 180_000);
});
