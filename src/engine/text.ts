/**
 * Incremental detokenization for generation: text grows as tokens arrive, never splits a
 * multi-byte character, finds stop strings, and says how much text is safe to stream
 * (nothing that a stop string may still cut).
 */
import type { Tokenizer } from '../model/tokenizer.js';

/** Tokens a partial character may stay pending before its replacement characters are kept. */
const MAX_PENDING = 4;

export class TextState {
  /** Generated tokens kept so far (a final EOS included). */
  readonly tokens: number[] = [];
  /** Decoded text of the tokens (without a final EOS), cut before a stop string. */
  text = '';
  /** Index into `stops` of the stop string found, or -1. */
  stopped = -1;
  readonly #tok: Tokenizer;
  readonly #stops: readonly string[];
  readonly #maxStop: number;
  readonly #textTokens: number[] = [];
  // Decode window (as Hugging Face TGI's decode_token): text of textTokens[prefix:read]
  // is already in `text`; textTokens[read:] is pending.
  #prefix = 0;
  #read = 0;

  constructor(tokenizer: Tokenizer, stops: readonly string[]) {
    this.#tok = tokenizer;
    this.#stops = stops;
    this.#maxStop = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  /**
   * Appends one token (`isEos`: it ends the sequence and adds no text). Returns false when
   * a stop string was found: the token is kept, the text is cut before the stop string.
   */
  push(token: number, isEos: boolean): boolean {
    this.tokens.push(token);
    if (isEos) return true;
    this.#textTokens.push(token);
    this.#advance(false);
    return this.stopped < 0;
  }

  /** Decodes whatever is pending (at the end of generation). Returns false on a stop string. */
  flush(): boolean {
    if (this.stopped >= 0) return false;
    this.#advance(true);
    return this.stopped < 0;
  }

  /** Length of the text that can be streamed now: no suffix that may start a stop string. */
  stableLength(final: boolean): number {
    if (final || this.stopped >= 0 || this.#maxStop === 0) return this.text.length;
    const t = this.text;
    for (let k = Math.min(this.#maxStop - 1, t.length); k > 0; --k) {
      const tail = t.slice(t.length - k);
      if (this.#stops.some((s) => s.length > k && s.startsWith(tail))) return t.length - k;
    }
    return t.length;
  }

  #advance(force: boolean): void {
    if (this.#read >= this.#textTokens.length) return;
    const before = this.#tok.decode(this.#textTokens.slice(this.#prefix, this.#read));
    const after = this.#tok.decode(this.#textTokens.slice(this.#prefix));
    const pending = this.#textTokens.length - this.#read;
    if (!force && pending < MAX_PENDING && (after.length <= before.length || after.endsWith('\uFFFD'))) return;
    const from = this.text.length;
    this.text += after.slice(before.length);
    this.#prefix = this.#read;
    this.#read = this.#textTokens.length;
    this.#findStop(from);
  }

  #findStop(from: number): void {
    let cut = -1;
    this.#stops.forEach((s, i) => {
      const at = this.text.indexOf(s, Math.max(0, from - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        this.stopped = i;
      }
    });
    if (cut >= 0) this.text = this.text.slice(0, cut);
  }
}
