/**
 * Reference forward pass of Hugging Face Llama-family decoders (LlamaForCausalLM,
 * MistralForCausalLM, Qwen2ForCausalLM), written from the architecture definition
 * (transformers' modeling_llama.py / modeling_qwen2.py) in plain float64 loops.
 *
 * It exists to check the fast native implementation: it is slow and deliberately
 * naive (no KV cache, no batching, no fused kernels), and every step mirrors one line
 * of the Hugging Face model. The only float32 rounding it performs is the one Hugging
 * Face itself imposes on the RoPE inverse frequencies (kept as a float32 buffer).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SpeculaError } from '../errors.js';
import { parseConfig, type LlamaConfig } from '../model/config.js';
import { readSafetensors, type TensorInfo } from '../model/safetensors.js';

/** Weights of a model directory widened to float64 (keyed by Hugging Face tensor name), with its config. */
export interface ReferenceModel {
  config: LlamaConfig;
  weights: Map<string, Float64Array>;
}

// ---------------------------------------------------------------------------------
// Decoding of the stored element types (little-endian), exact.
// ---------------------------------------------------------------------------------

/** IEEE 754 binary16 bits -> number (exact: every half is representable in a double). */
function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24; // zero or subnormal: m * 2^-14 / 2^10
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 bits -> number: a bfloat16 is the upper half of a float32. */
const bf16Scratch = new DataView(new ArrayBuffer(4));
function bfloat16ToNumber(bits: number): number {
  bf16Scratch.setUint32(0, (bits & 0xffff) << 16, true);
  return bf16Scratch.getFloat32(0, true);
}

/** Decodes one tensor's bytes (F32, F16 or BF16) into float64. */
function decodeTensor(info: TensorInfo, data: Buffer): Float64Array {
  const count = info.shape.reduce((a, b) => a * b, 1);
  const view = new DataView(data.buffer, data.byteOffset + info.offset, info.bytes);
  const out = new Float64Array(count);
  const elementBytes = info.dtype === 'F32' ? 4 : 2;
  if (info.bytes !== count * elementBytes) {
    throw new SpeculaError('E_FORMAT', `${info.file}: tensor ${info.name}: ${info.bytes} bytes for ${count} ${info.dtype} elements`);
  }
  for (let i = 0; i < count; i++) {
    if (info.dtype === 'F32') out[i] = view.getFloat32(4 * i, true);
    else if (info.dtype === 'F16') out[i] = halfToNumber(view.getUint16(2 * i, true));
    else out[i] = bfloat16ToNumber(view.getUint16(2 * i, true));
  }
  return out;
}

// ---------------------------------------------------------------------------------
// Expected tensors.
// ---------------------------------------------------------------------------------

/** Every tensor the forward pass reads, with its expected [rows, cols] (or [n]) shape. */
function expectedTensors(config: LlamaConfig): Map<string, number[]> {
  const H = config.hiddenSize;
  const I = config.intermediateSize;
  const V = config.vocabSize;
  const qDim = config.numHeads * config.headDim;
  const kvDim = config.numKvHeads * config.headDim;
  const expected = new Map<string, number[]>();
  expected.set('model.embed_tokens.weight', [V, H]);
  if (!config.tieWordEmbeddings) expected.set('lm_head.weight', [V, H]);
  expected.set('model.norm.weight', [H]);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    expected.set(`${p}input_layernorm.weight`, [H]);
    expected.set(`${p}post_attention_layernorm.weight`, [H]);
    expected.set(`${p}self_attn.q_proj.weight`, [qDim, H]);
    expected.set(`${p}self_attn.k_proj.weight`, [kvDim, H]);
    expected.set(`${p}self_attn.v_proj.weight`, [kvDim, H]);
    expected.set(`${p}self_attn.o_proj.weight`, [H, qDim]);
    if (config.qkvBias) {
      expected.set(`${p}self_attn.q_proj.bias`, [qDim]);
      expected.set(`${p}self_attn.k_proj.bias`, [kvDim]);
      expected.set(`${p}self_attn.v_proj.bias`, [kvDim]);
    }
    if (config.oBias) expected.set(`${p}self_attn.o_proj.bias`, [H]);
    expected.set(`${p}mlp.gate_proj.weight`, [I, H]);
    expected.set(`${p}mlp.up_proj.weight`, [I, H]);
    expected.set(`${p}mlp.down_proj.weight`, [H, I]);
  }
  return expected;
}

const SUPPORTED_DTYPES = new Set(['F32', 'F16', 'BF16']);

/**
 * Loads dir/config.json and dir/model.safetensors, decoding every F32/F16/BF16 tensor
 * to float64. Checks that every tensor the forward pass needs is present (E_FORMAT),
 * has the expected shape (E_SHAPE) and a supported dtype (E_UNSUPPORTED).
 */
export function loadReferenceModel(dir: string): ReferenceModel {
  const configFile = join(dir, 'config.json');
  let configText: string;
  try {
    configText = readFileSync(configFile, 'utf8');
  } catch (err) {
    throw new SpeculaError('E_IO', `${configFile}: cannot be read (${(err as Error).message})`);
  }
  let configJson: unknown;
  try {
    configJson = JSON.parse(configText);
  } catch (err) {
    throw new SpeculaError('E_FORMAT', `${configFile}: not valid JSON (${(err as Error).message})`);
  }
  const config = parseConfig(configJson, configFile);

  const weightsFile = join(dir, 'model.safetensors');
  const header = readSafetensors(weightsFile);
  let data: Buffer;
  try {
    data = readFileSync(weightsFile);
  } catch (err) {
    throw new SpeculaError('E_IO', `${weightsFile}: cannot be read (${(err as Error).message})`);
  }

  // Validate the tensors the forward pass needs before decoding anything.
  for (const [name, shape] of expectedTensors(config)) {
    const info = header.tensors.get(name);
    if (!info) throw new SpeculaError('E_FORMAT', `${weightsFile}: missing tensor ${name}`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new SpeculaError('E_SHAPE', `${weightsFile}: tensor ${name}: expected shape [${shape.join(', ')}], found [${info.shape.join(', ')}]`);
    }
    if (!SUPPORTED_DTYPES.has(info.dtype)) {
      throw new SpeculaError('E_UNSUPPORTED', `${weightsFile}: tensor ${name}: dtype ${info.dtype} (expected F32, F16 or BF16)`);
    }
  }

  // Decode every tensor of a floating dtype we know (extra tensors are kept, harmlessly).
  const weights = new Map<string, Float64Array>();
  for (const [name, info] of header.tensors) {
    if (SUPPORTED_DTYPES.has(info.dtype)) weights.set(name, decodeTensor(info, data));
  }
  return { config, weights };
}

// ---------------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------------

/** Fetches a weight, checking that it exists and has `length` elements. */
function weight(model: ReferenceModel, name: string, length: number): Float64Array {
  const w = model.weights.get(name);
  if (!w) throw new SpeculaError('E_FORMAT', `reference model: missing tensor ${name}`);
  if (w.length !== length) {
    throw new SpeculaError('E_SHAPE', `reference model: tensor ${name}: expected ${length} elements, found ${w.length}`);
  }
  return w;
}

/** Linear layer: y = x W^T + b, with W row-major [outDim, inDim] and b [outDim] (optional). */
function linear(x: Float64Array, W: Float64Array, b: Float64Array | null, outDim: number, inDim: number): Float64Array {
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let sum = 0;
    for (let i = 0; i < inDim; i++) sum += x[i]! * W[o * inDim + i]!;
    y[o] = b ? sum + b[o]! : sum;
  }
  return y;
}

/** RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight. */
function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  const n = x.length;
  let sumSquares = 0;
  for (let i = 0; i < n; i++) sumSquares += x[i]! * x[i]!;
  const inv = 1 / Math.sqrt(sumSquares / n + eps);
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) y[i] = x[i]! * inv * w[i]!;
  return y;
}

/** silu(x) = x * sigmoid(x) = x / (1 + exp(-x)). */
function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * RoPE inverse frequencies inv_freq[i] = 1 / theta^(2i / headDim), with the optional
 * "llama3" scaling, computed in float64 and then rounded to float32 (Hugging Face keeps
 * inv_freq as a float32 buffer).
 */
function ropeInverseFrequencies(config: LlamaConfig): Float64Array {
  const half = config.headDim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let f = 1 / config.ropeTheta ** ((2 * i) / config.headDim);
    const s = config.ropeScaling;
    if (s) {
      const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
      const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowFreqWavelen) {
        f = f / s.factor; // low frequencies: scaled down fully
      } else if (wavelen >= highFreqWavelen) {
        // medium band: interpolate between scaled and unscaled
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        f = ((1 - smooth) * f) / s.factor + smooth * f;
      } // high frequencies (wavelen < highFreqWavelen): unchanged
    }
    invFreq[i] = Math.fround(f);
  }
  return invFreq;
}

/**
 * Rotates each head vector of `x` (numHeads vectors of headDim, concatenated) in place
 * for position `pos`, rotate_half form: the first half pairs with the second half.
 */
function applyRope(x: Float64Array, numHeads: number, headDim: number, pos: number, invFreq: Float64Array): void {
  const half = headDim / 2;
  for (let h = 0; h < numHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const angle = invFreq[i]! * pos;
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      const a = x[base + i]!;
      const b = x[base + i + half]!;
      x[base + i] = a * cos - b * sin;
      x[base + i + half] = b * cos + a * sin;
    }
  }
}

// ---------------------------------------------------------------------------------
// Forward pass.
// ---------------------------------------------------------------------------------

/**
 * Logits of the full causal sequence `tokens` starting at position 0, as a row-major
 * [tokens.length, vocabSize] Float64Array (row t: the logits after reading tokens[0..t]).
 */
export function referenceLogits(model: ReferenceModel, tokens: readonly number[]): Float64Array {
  if (!Array.isArray(tokens)) throw new SpeculaError('E_ARG', 'tokens: expected an array of token ids');
  const c = model.config;
  const V = c.vocabSize;
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const D = c.headDim;
  const nH = c.numHeads;
  const nKv = c.numKvHeads;
  const qDim = nH * D;
  const kvDim = nKv * D;
  const T = tokens.length;
  const eps = c.rmsNormEps;

  tokens.forEach((tok, t) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= V) {
      throw new SpeculaError('E_VALUE', `tokens[${t}]: expected an integer token id in [0, ${V}), found ${tok}`);
    }
  });
  if (nH % nKv !== 0) throw new SpeculaError('E_SHAPE', `numHeads ${nH} is not a multiple of numKvHeads ${nKv}`);
  if (D % 2 !== 0) throw new SpeculaError('E_SHAPE', `headDim ${D} must be even for RoPE`);
  const groupSize = nH / nKv; // query heads per kv head (repeat_kv)

  // Embedding lookup: h[t] = embed_tokens[tokens[t]].
  const embed = weight(model, 'model.embed_tokens.weight', V * H);
  let hidden: Float64Array[] = tokens.map((tok) => embed.slice(tok * H, (tok + 1) * H));

  const invFreq = ropeInverseFrequencies(c);
  const scale = 1 / Math.sqrt(D);

  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const inputNorm = weight(model, `${p}input_layernorm.weight`, H);
    const postNorm = weight(model, `${p}post_attention_layernorm.weight`, H);
    const Wq = weight(model, `${p}self_attn.q_proj.weight`, qDim * H);
    const Wk = weight(model, `${p}self_attn.k_proj.weight`, kvDim * H);
    const Wv = weight(model, `${p}self_attn.v_proj.weight`, kvDim * H);
    const Wo = weight(model, `${p}self_attn.o_proj.weight`, H * qDim);
    const bq = c.qkvBias ? weight(model, `${p}self_attn.q_proj.bias`, qDim) : null;
    const bk = c.qkvBias ? weight(model, `${p}self_attn.k_proj.bias`, kvDim) : null;
    const bv = c.qkvBias ? weight(model, `${p}self_attn.v_proj.bias`, kvDim) : null;
    const bo = c.oBias ? weight(model, `${p}self_attn.o_proj.bias`, H) : null;
    const Wgate = weight(model, `${p}mlp.gate_proj.weight`, I * H);
    const Wup = weight(model, `${p}mlp.up_proj.weight`, I * H);
    const Wdown = weight(model, `${p}mlp.down_proj.weight`, H * I);

    // --- Self-attention block: h = h + o_proj(attn(input_layernorm(h))) ---
    const q: Float64Array[] = [];
    const k: Float64Array[] = [];
    const v: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const x = rmsNorm(hidden[t]!, inputNorm, eps);
      const qt = linear(x, Wq, bq, qDim, H);
      const kt = linear(x, Wk, bk, kvDim, H);
      const vt = linear(x, Wv, bv, kvDim, H);
      applyRope(qt, nH, D, t, invFreq); // position of token t is t
      applyRope(kt, nKv, D, t, invFreq);
      q.push(qt);
      k.push(kt);
      v.push(vt);
    }

    const afterAttn: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const attnOut = new Float64Array(qDim); // heads concatenated in head order
      for (let h = 0; h < nH; h++) {
        const g = Math.floor(h / groupSize); // the kv head this query head reads
        const qOff = h * D;
        const kvOff = g * D;
        // Causal scores s_j = q . k_j / sqrt(D) for j <= t.
        const scores = new Float64Array(t + 1);
        for (let j = 0; j <= t; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[t]![qOff + d]! * k[j]![kvOff + d]!;
          scores[j] = dot * scale;
        }
        // Softmax (max-subtracted for stability; mathematically identical).
        let max = -Infinity;
        for (let j = 0; j <= t; j++) max = Math.max(max, scores[j]!);
        let sum = 0;
        for (let j = 0; j <= t; j++) {
          scores[j] = Math.exp(scores[j]! - max);
          sum += scores[j]!;
        }
        // Weighted sum of values.
        for (let j = 0; j <= t; j++) {
          const pj = scores[j]! / sum;
          for (let d = 0; d < D; d++) attnOut[qOff + d] = attnOut[qOff + d]! + pj * v[j]![kvOff + d]!;
        }
      }
      const o = linear(attnOut, Wo, bo, H, qDim);
      const h = new Float64Array(H);
      for (let i = 0; i < H; i++) h[i] = hidden[t]![i]! + o[i]!;
      afterAttn.push(h);
    }

    // --- MLP block: h = h + down_proj(silu(gate_proj(a)) * up_proj(a)), a = post_attention_layernorm(h) ---
    hidden = afterAttn.map((h) => {
      const a = rmsNorm(h, postNorm, eps);
      const gate = linear(a, Wgate, null, I, H);
      const up = linear(a, Wup, null, I, H);
      const act = new Float64Array(I);
      for (let i = 0; i < I; i++) act[i] = silu(gate[i]!) * up[i]!;
      const down = linear(act, Wdown, null, H, I);
      const out = new Float64Array(H);
      for (let i = 0; i < H; i++) out[i] = h[i]! + down[i]!;
      return out;
    });
  }

  // Final norm and LM head (tied to the embedding when tieWordEmbeddings).
  const finalNorm = weight(model, 'model.norm.weight', H);
  const lmHead = c.tieWordEmbeddings ? embed : weight(model, 'lm_head.weight', V * H);
  const logits = new Float64Array(T * V);
  for (let t = 0; t < T; t++) {
    const x = rmsNorm(hidden[t]!, finalNorm, eps);
    logits.set(linear(x, lmHead, null, V, H), t * V);
  }
  return logits;
}
