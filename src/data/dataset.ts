/**
 * Dataset loading for training, distillation and benchmarks: one synchronous reader for the
 * common public formats (GSM8K, HumanEval, Alpaca / self-instruct seed tasks, `{text}` JSONL,
 * plain text), each turned into prompt/completion records with a fixed text format.
 * Every failure is a SpeculaError naming the file (and the JSONL line or JSON array index),
 * what was expected and what was received.
 */
import { readFileSync, statSync } from 'node:fs';
import { basename, extname } from 'node:path';
import { SpeculaError } from '../errors.js';
import { describe, fail, isIntegerIn, knownKeys, object } from '../validate.js';

/**
 * The format a dataset was detected as:
 * - 'gsm8k': JSON records with `question` (+ `answer`);
 * - 'humaneval': JSON records with `prompt` (+ `canonical_solution`);
 * - 'alpaca': JSON records with `instruction` (+ `instances[0].input` / `.output`);
 * - 'text-field': JSON records with `text`;
 * - 'lines': plain text, one prompt per non-empty line;
 * - 'text': plain text as documents, one record per block of lines between blank lines.
 */
export type DatasetShape = 'gsm8k' | 'humaneval' | 'alpaca' | 'text-field' | 'lines' | 'text';

/** The shapes, in the order JSON records are matched against (first key found wins). */
export const DATASET_SHAPES: readonly DatasetShape[] = ['gsm8k', 'humaneval', 'alpaca', 'text-field', 'lines', 'text'];

/** One record, with the fields of the source kept raw; documentText / promptText format them. */
export interface DatasetRecord {
  /** The question (gsm8k), the code prompt (humaneval), the instruction (alpaca), or the text. */
  prompt: string;
  /** The answer, canonical solution or output; '' when the record has none. */
  completion: string;
  /** alpaca only: `instances[0].input`, present only when non-empty. */
  input?: string;
}

/** A loaded dataset. */
export interface Dataset {
  /** The path as given to loadDataset. */
  path: string;
  shape: DatasetShape;
  records: DatasetRecord[];
  /** One line for logs, e.g. "gsm8k-train.jsonl: 7473 GSM8K records (question + answer)". */
  description: string;
}

/** Options of loadDataset. */
export interface LoadDatasetOptions {
  /**
   * How a plain-text file is split: 'prompts' (default) gives one record per non-empty line
   * (shape 'lines'); 'documents' gives one record per block of lines between blank lines
   * (shape 'text'; the whole text when it has no blank line). JSON and JSONL files ignore it.
   */
  kind?: 'prompts' | 'documents';
  /** Keep only the first `limit` records (a positive integer); later records are not parsed. */
  limit?: number;
}

/** The JSON key that selects each JSON shape, in matching order. */
const KEY_OF: ReadonlyArray<readonly [DatasetShape, string]> = [
  ['gsm8k', 'question'],
  ['humaneval', 'prompt'],
  ['alpaca', 'instruction'],
  ['text-field', 'text'],
];

// What a record contributes as a prompt (kind 'prompts'); LABEL describes documents.
const PROMPT_PART: Partial<Record<DatasetShape, string>> = {
  'gsm8k': 'question', 'humaneval': 'prompt', 'alpaca': 'instruction + first input',
};

const LABEL: Record<DatasetShape, (n: number) => string> = {
  'gsm8k': (n) => `${n} GSM8K ${n === 1 ? 'record' : 'records'} (question + answer)`,
  'humaneval': (n) => `${n} HumanEval ${n === 1 ? 'record' : 'records'} (prompt + canonical_solution)`,
  'alpaca': (n) => `${n} Alpaca ${n === 1 ? 'record' : 'records'} (instruction + input + output)`,
  'text-field': (n) => `${n} text ${n === 1 ? 'record' : 'records'} (text field)`,
  'lines': (n) => `${n} ${n === 1 ? 'prompt' : 'prompts'} (one per line)`,
  'text': (n) => `${n} text ${n === 1 ? 'block' : 'blocks'} (separated by blank lines)`,
};

function keyList(o: Record<string, unknown>): string {
  const keys = Object.keys(o);
  if (keys.length === 0) return 'an empty object';
  const shown = keys.slice(0, 8).join(', ');
  return `an object with keys ${shown}${keys.length > 8 ? ', ...' : ''}`;
}

/** The shape of the first JSON record, or an E_FORMAT naming where it is. */
function shapeOf(where: string, v: unknown): DatasetShape {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new SpeculaError('E_FORMAT', `${where}: expected a JSON object (a dataset record), received ${describe(v)}`);
  }
  for (const [shape, key] of KEY_OF) if (key in v) return shape;
  const received = keyList(v as Record<string, unknown>);
  const expected = 'an object with a question, prompt, instruction or text field';
  throw new SpeculaError('E_FORMAT', `${where}: expected ${expected}, received ${received}`);
}

/** A required string field of a JSON record. */
function field(where: string, o: Record<string, unknown>, key: string, shape: DatasetShape, first: string): string {
  const v = o[key];
  if (typeof v === 'string') return v;
  if (v === undefined) {
    throw new SpeculaError('E_FORMAT', `${where}: missing "${key}" (expected a ${shape} record like ${first}), received ${keyList(o)}`);
  }
  throw new SpeculaError('E_FORMAT', `${where}: "${key}": expected a string, received ${describe(v)}`);
}

/** An optional string field: '' when absent or null. */
function optional(where: string, o: Record<string, unknown>, key: string): string {
  const v = o[key];
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw new SpeculaError('E_FORMAT', `${where}: "${key}": expected a string, received ${describe(v)}`);
  return v;
}

/** One JSON value -> a record of `shape` (the shape of the first record, at `first`). */
function toRecord(where: string, v: unknown, shape: DatasetShape, first: string): DatasetRecord {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new SpeculaError('E_FORMAT', `${where}: expected a JSON object (a ${shape} record like ${first}), received ${describe(v)}`);
  }
  const o = v as Record<string, unknown>;
  switch (shape) {
    case 'gsm8k':
      return { prompt: field(where, o, 'question', shape, first), completion: optional(where, o, 'answer') };
    case 'humaneval': {
      const solution = o['canonical_solution'];
      return { prompt: field(where, o, 'prompt', shape, first), completion: typeof solution === 'string' ? solution : '' };
    }
    case 'alpaca': {
      const prompt = field(where, o, 'instruction', shape, first);
      const instances = o['instances'];
      if (instances === undefined || instances === null) return { prompt, completion: '' };
      if (!Array.isArray(instances)) {
        throw new SpeculaError('E_FORMAT', `${where}: "instances": expected an Array of {input, output}, received ${describe(instances)}`);
      }
      const inst: unknown = instances[0];
      if (inst === undefined) return { prompt, completion: '' };
      if (typeof inst !== 'object' || inst === null || Array.isArray(inst)) {
        throw new SpeculaError('E_FORMAT', `${where}: "instances[0]": expected an object {input, output}, received ${describe(inst)}`);
      }
      const i = inst as Record<string, unknown>;
      const input = optional(`${where}: instances[0]`, i, 'input');
      const completion = optional(`${where}: instances[0]`, i, 'output');
      return input === '' ? { prompt, completion } : { prompt, completion, input };
    }
    default:
      return { prompt: field(where, o, 'text', shape, first), completion: '' };
  }
}

function parseJsonLines(file: string, text: string, limit: number): { shape: DatasetShape; records: DatasetRecord[] } {
  const lines = text.split('\n');
  const records: DatasetRecord[] = [];
  let shape: DatasetShape | undefined;
  let first = '';
  for (let i = 0; i < lines.length && records.length < limit; i++) {
    const line = lines[i]!;
    if (line.trim() === '') continue;
    const where = `${file}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (err) {
      throw new SpeculaError('E_FORMAT', `${where}: expected one JSON object per line, received invalid JSON (${(err as Error).message})`);
    }
    if (shape === undefined) {
      shape = shapeOf(where, v);
      first = `line ${i + 1}`;
    }
    records.push(toRecord(where, v, shape, first));
  }
  return { shape: shape ?? 'text-field', records };
}

function parseJsonArray(file: string, text: string, limit: number): { shape: DatasetShape; records: DatasetRecord[] } {
  if (text.trim() === '') return { shape: 'text-field', records: [] };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new SpeculaError('E_FORMAT', `${file}: expected a JSON array of records, received invalid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(v)) throw new SpeculaError('E_FORMAT', `${file}: expected a JSON array of records, received ${describe(v)}`);
  if (v.length === 0) return { shape: 'text-field', records: [] };
  const shape = shapeOf(`${file}: [0]`, v[0]);
  const n = Math.min(v.length, limit);
  const records: DatasetRecord[] = [];
  for (let i = 0; i < n; i++) records.push(toRecord(`${file}: [${i}]`, v[i], shape, 'element [0]'));
  return { shape, records };
}

/** Plain text: one record per non-blank line, or per block of lines between blank lines. */
function parseText(text: string, documents: boolean, limit: number): DatasetRecord[] {
  const records: DatasetRecord[] = [];
  let block: string[] = [];
  for (const line of text.split('\n')) {
    if (records.length >= limit) break;
    const blank = line.trim() === '';
    if (!documents) {
      if (!blank) records.push({ prompt: line, completion: '' });
    } else if (!blank) {
      block.push(line);
    } else if (block.length > 0) {
      records.push({ prompt: block.join('\n'), completion: '' });
      block = [];
    }
  }
  if (block.length > 0 && records.length < limit) records.push({ prompt: block.join('\n'), completion: '' });
  return records;
}

/** The first non-blank line parses as a JSON object: the file is JSONL whatever its name. */
function looksLikeJsonLines(text: string): boolean {
  if (text.trimStart()[0] !== '{') return false;
  const line = text.split('\n').find((l) => l.trim() !== '');
  try {
    const v: unknown = JSON.parse(line ?? '');
    return typeof v === 'object' && v !== null && !Array.isArray(v);
  } catch {
    return false;
  }
}

/**
 * Reads a dataset file synchronously and detects its shape:
 * - `.jsonl` (or any file whose first non-blank line is a JSON object): one JSON record per
 *   non-empty line; the first record's keys pick the shape (`question` -> gsm8k, `prompt` ->
 *   humaneval, `instruction` -> alpaca, `text` -> text-field) and every later line must have
 *   that field as a string. Errors name the line as FILE:LINE.
 * - `.json`: a JSON array of such records; errors name the array index.
 * - anything else: plain text, split as `opts.kind` says (one prompt per non-empty line, or
 *   blocks between blank lines as documents).
 * A UTF-8 BOM is stripped and CRLF line ends read as LF.
 * @throws SpeculaError E_IO (missing file, a directory, unreadable), E_FORMAT (malformed
 *   JSON / JSONL, a record without the expected field), E_VALUE (no records, a bad limit),
 *   E_ARG (a bad path or option).
 */
export function loadDataset(path: string, opts: LoadDatasetOptions = {}): Dataset {
  if (typeof path !== 'string' || path === '') fail('E_ARG', 'path', 'a non-empty string (the dataset file)', path);
  const o = object('opts', opts);
  knownKeys('opts', o, ['kind', 'limit']);
  const kind = o['kind'] ?? 'prompts';
  if (typeof kind !== 'string') fail('E_ARG', 'opts.kind', "'prompts' or 'documents'", kind);
  if (kind !== 'prompts' && kind !== 'documents') fail('E_VALUE', 'opts.kind', "'prompts' or 'documents'", kind);
  const limitArg = o['limit'];
  if (limitArg !== undefined && !isIntegerIn(limitArg, 1)) fail('E_VALUE', 'opts.limit', 'a positive integer', limitArg);
  const limit = limitArg ?? Infinity;

  let text: string;
  try {
    const st = statSync(path);
    if (st.isDirectory()) throw new SpeculaError('E_IO', `${path}: expected a dataset file, received a directory`);
    if (!st.isFile()) throw new SpeculaError('E_IO', `${path}: expected a dataset file, received something that is not a regular file`);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof SpeculaError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : `cannot read (${code ?? (err as Error).message})`;
    throw new SpeculaError('E_IO', `${path}: ${why}`, { cause: err });
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  text = text.replace(/\r\n/g, '\n');

  const ext = extname(path).toLowerCase();
  let shape: DatasetShape;
  let records: DatasetRecord[];
  if (ext === '.json') {
    ({ shape, records } = parseJsonArray(path, text, limit));
  } else if (ext === '.jsonl' || looksLikeJsonLines(text)) {
    ({ shape, records } = parseJsonLines(path, text, limit));
  } else {
    shape = kind === 'documents' ? 'text' : 'lines';
    records = parseText(text, kind === 'documents', limit);
  }
  if (records.length === 0) {
    throw new SpeculaError('E_VALUE', `${path}: no records (${text.trim() === '' ? 'the file is empty' : 'none found'})`);
  }
  const limited = limitArg !== undefined && records.length === limitArg ? `, first ${limitArg}` : '';
  let label = LABEL[shape](records.length);
  const part = kind === 'prompts' ? PROMPT_PART[shape] : undefined;
  if (part !== undefined) label = label.replace(/\(.*\)$/, `(${part})`);
  return { path, shape, records, description: `${basename(path)}: ${label}${limited}` };
}

function checkArgs(r: unknown, shape: unknown): DatasetRecord {
  const rec = object('record', r);
  if (typeof rec['prompt'] !== 'string') fail('E_ARG', 'record.prompt', 'a string', rec['prompt']);
  if (typeof rec['completion'] !== 'string') fail('E_ARG', 'record.completion', 'a string', rec['completion']);
  if (rec['input'] !== undefined && typeof rec['input'] !== 'string') fail('E_ARG', 'record.input', 'a string or undefined', rec['input']);
  if (!DATASET_SHAPES.includes(shape as DatasetShape)) fail('E_ARG', 'shape', `one of ${DATASET_SHAPES.join(', ')}`, shape);
  return rec as unknown as DatasetRecord;
}

function alpacaHead(r: DatasetRecord): string {
  return `Instruction: ${r.prompt}${r.input ? `\nInput: ${r.input}` : ''}\nResponse:`;
}

/**
 * What a model is prompted with for a record: gsm8k -> "Question: q\nAnswer:";
 * alpaca -> "Instruction: i\nInput: x\nResponse:" (no Input line when the input is empty);
 * the other shapes -> the prompt itself. Always an exact prefix of documentText.
 */
export function promptText(r: DatasetRecord, shape: DatasetShape): string {
  checkArgs(r, shape);
  switch (shape) {
    case 'gsm8k': return `Question: ${r.prompt}\nAnswer:`;
    case 'alpaca': return alpacaHead(r);
    default: return r.prompt;
  }
}

/**
 * A record as one training document: gsm8k -> "Question: q\nAnswer: a"; humaneval ->
 * prompt + completion; alpaca -> "Instruction: i\nInput: x\nResponse: o" (no Input line when
 * the input is empty); lines / text / text-field -> the prompt. promptText(r, shape) is an
 * exact prefix of it. With an empty completion, no space follows "Answer:" / "Response:".
 */
export function documentText(r: DatasetRecord, shape: DatasetShape): string {
  checkArgs(r, shape);
  const tail = r.completion === '' ? '' : ` ${r.completion}`;
  switch (shape) {
    case 'gsm8k': return `Question: ${r.prompt}\nAnswer:${tail}`;
    case 'humaneval': return r.prompt + r.completion;
    case 'alpaca': return alpacaHead(r) + tail;
    default: return r.prompt;
  }
}
