/**
 * Tokenizers: tokenizer.json (+ tokenizer_config.json) through @huggingface/tokenizers,
 * with the special token ids resolved from config.json and tokenizer_config.json; and the
 * byte-level tokenizer that initModel writes.
 */
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { SpeculaError } from '../errors.js';

export interface SpecialTokenIds {
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
}

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (e.g. BOS) as its post-processor says. Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, ...) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

type TokenLike = string | { content?: unknown } | null | undefined;

function tokenText(t: TokenLike): string | null {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof t.content === 'string') return t.content;
  return null;
}

/** A loaded tokenizer. Token ids the tokenizer does not know decode to nothing (as in Hugging Face). */
export class Tokenizer {
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** Number of ids the tokenizer knows (its vocabulary plus added tokens). */
  readonly size: number;
  readonly #hf: HfTokenizer;

  /**
   * @param json parsed tokenizer.json
   * @param tokenizerConfig parsed tokenizer_config.json, or {}
   * @param ids special ids from config.json; missing ones are looked up from tokenizer_config's tokens
   * @param file names the tokenizer in error messages
   */
  constructor(json: unknown, tokenizerConfig: Record<string, unknown> = {}, ids?: Partial<SpecialTokenIds>, file = 'tokenizer.json') {
    if (typeof json !== 'object' || json === null || typeof (json as { model?: unknown }).model !== 'object') {
      throw new SpeculaError('E_FORMAT', `${file}: expected a tokenizer.json object with a "model" field`);
    }
    try {
      this.#hf = new HfTokenizer(json, tokenizerConfig);
    } catch (err) {
      throw new SpeculaError('E_FORMAT', `${file}: cannot build the tokenizer (${(err as Error).message})`);
    }
    const lookup = (t: TokenLike): number | null => {
      const s = tokenText(t);
      return s === null ? null : this.#hf.token_to_id(s) ?? null;
    };
    this.bosTokenId = ids?.bosTokenId ?? lookup(tokenizerConfig.bos_token as TokenLike);
    const eos = ids?.eosTokenIds && ids.eosTokenIds.length > 0 ? ids.eosTokenIds : [lookup(tokenizerConfig.eos_token as TokenLike)];
    this.eosTokenIds = Object.freeze(eos.filter((x): x is number => x !== null));
    this.padTokenId = ids?.padTokenId ?? lookup(tokenizerConfig.pad_token as TokenLike);
    let size = 0;
    for (const id of this.#hf.get_vocab(true).values()) size = Math.max(size, id + 1);
    this.size = size;
  }

  encode(text: string, opts: EncodeOptions = {}): Int32Array {
    if (typeof text !== 'string') throw new SpeculaError('E_ARG', `text: expected a string, received ${typeof text}`);
    return Int32Array.from(this.#hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids);
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const list: number[] = [];
    for (let i = 0; i < ids.length; ++i) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0) throw new SpeculaError('E_VALUE', `ids[${i}]: expected a non-negative integer, received ${id}`);
      if (this.#hf.id_to_token(id) !== undefined) list.push(id);
    }
    // (@huggingface/tokenizers throws on an empty list)
    return list.length === 0 ? '' : this.#hf.decode(list, { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.#hf.id_to_token(id);
  }
}

/** GPT-2's byte-to-character map: printable bytes map to themselves, the rest to U+0100.. */
export function bytesToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; ++b) keep.push(b);
  for (let b = 0xa1; b <= 0xac; ++b) keep.push(b);
  for (let b = 0xae; b <= 0xff; ++b) keep.push(b);
  const out = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; ++b) out[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + extra++);
  return out;
}

/**
 * A byte-level BPE tokenizer.json with no merges: ids 0..255 are the bytes, 256 is "<s>"
 * (BOS, added in front when encoding with special tokens), 257 is "</s>" (EOS).
 * Hugging Face tokenizers and @huggingface/tokenizers both load it.
 */
export function byteTokenizerJson(): { json: Record<string, unknown>; config: Record<string, unknown>; bos: number; eos: number } {
  const chars = bytesToUnicode();
  const vocab: Record<string, number> = {};
  chars.forEach((c, i) => (vocab[c] = i));
  const special = (id: number, content: string) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(256, '<s>'), special(257, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [256], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [],
    },
  };
  const config = {
    tokenizer_class: 'PreTrainedTokenizerFast', bos_token: '<s>', eos_token: '</s>', add_bos_token: true,
    clean_up_tokenization_spaces: false, model_max_length: 1000000,
  };
  return { json, config, bos: 256, eos: 257 };
}
