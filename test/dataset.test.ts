// loadDataset: shape detection for each supported format from tiny temp fixtures, the prompt
// and document text formats, CRLF / BOM / limit, and every error with its code and a message
// naming the file (and line or index). The public datasets in ../shared/data are read only
// where they exist beside the repository.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { SpeculaError } from '../src/errors.js';
import {
  DATASET_SHAPES, documentText, loadDataset, promptText, type Dataset, type DatasetRecord, type DatasetShape,
} from '../src/data/dataset.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(root, '../shared/data');

const dir = mkdtempSync(path.join(os.tmpdir(), 'specula-dataset-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Writes a fixture file into the temp dir and returns its path. */
function fixture(name: string, content: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, content);
  return file;
}

const jsonl = (rows: unknown[]): string => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

/** The SpeculaError fn throws (fails the test when it throws nothing or something else). */
function caught(fn: () => unknown): SpeculaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SpeculaError);
    return err as SpeculaError;
  }
  throw new Error('expected a SpeculaError, nothing was thrown');
}

function expectPrefixes(ds: Dataset): void {
  for (const r of ds.records) {
    const p = promptText(r, ds.shape);
    const d = documentText(r, ds.shape);
    expect(d.startsWith(p), `${JSON.stringify(p)} is a prefix of ${JSON.stringify(d)}`).toBe(true);
  }
}

const GSM = [
  { question: 'What is 2 + 3?', answer: '2 + 3 = 5\n#### 5' },
  { question: 'What is 4 * 6?', answer: '4 * 6 = 24\n#### 24' },
  { question: 'Half of 10?', answer: '#### 5' },
];
const HUMANEVAL = [
  { task_id: 'HumanEval/0', prompt: 'def add(a, b):\n    """Add."""\n', canonical_solution: '    return a + b\n', entry_point: 'add' },
  { task_id: 'HumanEval/1', prompt: 'def neg(a):\n', canonical_solution: null },
];
const ALPACA = [
  { id: 't0', instruction: 'Name a fruit.', instances: [{ input: '', output: 'Apple.' }], is_classification: false },
  { id: 't1', instruction: 'Translate to French.', instances: [{ input: 'cat', output: 'chat' }] },
  { id: 't2', instruction: 'Say nothing.', instances: [] },
];

describe('loadDataset: shapes', () => {
  it('detects GSM8K JSONL (question + answer)', () => {
    const file = fixture('gsm.jsonl', jsonl(GSM));
    const ds = loadDataset(file);
    expect(ds.shape).toBe('gsm8k');
    expect(ds.path).toBe(file);
    expect(ds.records).toHaveLength(3);
    expect(ds.records[0]).toEqual({ prompt: 'What is 2 + 3?', completion: '2 + 3 = 5\n#### 5' });
    expect(ds.description).toBe('gsm.jsonl: 3 GSM8K records (question)');
    expect(loadDataset(file, { kind: 'documents' }).description).toBe('gsm.jsonl: 3 GSM8K records (question + answer)');
    expect(promptText(ds.records[0]!, 'gsm8k')).toBe('Question: What is 2 + 3?\nAnswer:');
    expect(documentText(ds.records[0]!, 'gsm8k')).toBe('Question: What is 2 + 3?\nAnswer: 2 + 3 = 5\n#### 5');
    expectPrefixes(ds);
  });

  it('detects HumanEval JSONL (prompt + canonical_solution; a non-string solution is empty)', () => {
    const ds = loadDataset(fixture('he.jsonl', jsonl(HUMANEVAL)));
    expect(ds.shape).toBe('humaneval');
    expect(ds.records).toEqual([
      { prompt: HUMANEVAL[0]!.prompt, completion: '    return a + b\n' },
      { prompt: 'def neg(a):\n', completion: '' },
    ]);
    expect(promptText(ds.records[0]!, 'humaneval')).toBe(HUMANEVAL[0]!.prompt);
    expect(documentText(ds.records[0]!, 'humaneval')).toBe(HUMANEVAL[0]!.prompt + '    return a + b\n');
    expect(ds.description).toContain('2 HumanEval records');
    expectPrefixes(ds);
  });

  it('detects Alpaca seed tasks (instruction, instances[0].input / output)', () => {
    const ds = loadDataset(fixture('seed.jsonl', jsonl(ALPACA)));
    expect(ds.shape).toBe('alpaca');
    expect(ds.records).toEqual([
      { prompt: 'Name a fruit.', completion: 'Apple.' },
      { prompt: 'Translate to French.', completion: 'chat', input: 'cat' },
      { prompt: 'Say nothing.', completion: '' },
    ]);
    const [a, b, c] = ds.records as [DatasetRecord, DatasetRecord, DatasetRecord];
    expect(promptText(a, 'alpaca')).toBe('Instruction: Name a fruit.\nResponse:');
    expect(documentText(a, 'alpaca')).toBe('Instruction: Name a fruit.\nResponse: Apple.');
    expect(promptText(b, 'alpaca')).toBe('Instruction: Translate to French.\nInput: cat\nResponse:');
    expect(documentText(b, 'alpaca')).toBe('Instruction: Translate to French.\nInput: cat\nResponse: chat');
    expect(documentText(c, 'alpaca')).toBe('Instruction: Say nothing.\nResponse:');
    expect(ds.description).toContain('3 Alpaca records');
    expectPrefixes(ds);
  });

  it('detects {text} JSONL as text-field', () => {
    const ds = loadDataset(fixture('t.jsonl', jsonl([{ text: 'one' }, { text: 'two', meta: 1 }])));
    expect(ds.shape).toBe('text-field');
    expect(ds.records).toEqual([{ prompt: 'one', completion: '' }, { prompt: 'two', completion: '' }]);
    expect(documentText(ds.records[1]!, 'text-field')).toBe('two');
    expectPrefixes(ds);
  });

  it('reads JSON lines in a file of another name, skipping blank lines', () => {
    const ds = loadDataset(fixture('gsm.data', `\n${JSON.stringify(GSM[0])}\n\n  \n${JSON.stringify(GSM[1])}\n`));
    expect(ds.shape).toBe('gsm8k');
    expect(ds.records).toHaveLength(2);
  });

  it('reads a .json array of records', () => {
    const ds = loadDataset(fixture('gsm.json', JSON.stringify(GSM, null, 2)));
    expect(ds.shape).toBe('gsm8k');
    expect(ds.records).toHaveLength(3);
    expect(ds.records[2]).toEqual({ prompt: 'Half of 10?', completion: '#### 5' });
    const he = loadDataset(fixture('he.json', JSON.stringify(HUMANEVAL)));
    expect(he.shape).toBe('humaneval');
    expectPrefixes(ds);
  });

  it('reads plain text as one prompt per non-empty line (kind prompts, the default)', () => {
    const file = fixture('prompts.txt', 'first prompt\n\nsecond prompt\n   \nthird\n');
    const ds = loadDataset(file);
    expect(ds.shape).toBe('lines');
    expect(ds.records.map((r) => r.prompt)).toEqual(['first prompt', 'second prompt', 'third']);
    expect(ds.records.every((r) => r.completion === '')).toBe(true);
    expect(ds.description).toBe('prompts.txt: 3 prompts (one per line)');
    expect(loadDataset(file, { kind: 'prompts' }).records).toHaveLength(3);
    expectPrefixes(ds);
  });

  it('reads plain text as documents split at blank lines (kind documents)', () => {
    const play = 'First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\n\nFirst Citizen:\nYou are all resolved.\n';
    const file = fixture('play.txt', play);
    const ds = loadDataset(file, { kind: 'documents' });
    expect(ds.shape).toBe('text');
    expect(ds.records.map((r) => r.prompt)).toEqual([
      'First Citizen:\nBefore we proceed.', 'All:\nSpeak, speak.', 'First Citizen:\nYou are all resolved.',
    ]);
    expect(ds.description).toBe('play.txt: 3 text blocks (separated by blank lines)');
    expectPrefixes(ds);
    const whole = loadDataset(fixture('whole.txt', 'line one\nline two\nline three'), { kind: 'documents' });
    expect(whole.records).toEqual([{ prompt: 'line one\nline two\nline three', completion: '' }]);
    expect(whole.description).toBe('whole.txt: 1 text block (separated by blank lines)');
  });

  it('a plain-text line starting with { that is not JSON stays plain text', () => {
    const ds = loadDataset(fixture('braces.txt', '{ not json\nsecond\n'));
    expect(ds.shape).toBe('lines');
    expect(ds.records).toHaveLength(2);
  });
});

describe('loadDataset: encoding and limit', () => {
  it('strips a UTF-8 BOM and reads CRLF line ends', () => {
    const crlf = '\uFEFF' + jsonl(GSM).replace(/\n/g, '\r\n');
    const ds = loadDataset(fixture('crlf.jsonl', crlf));
    expect(ds.shape).toBe('gsm8k');
    expect(ds.records).toHaveLength(3);
    expect(ds.records[0]!.prompt).toBe('What is 2 + 3?');
    const text = loadDataset(fixture('crlf.txt', '\uFEFFalpha\r\nbeta\r\n\r\ngamma\r\n'));
    expect(text.records.map((r) => r.prompt)).toEqual(['alpha', 'beta', 'gamma']);
    const docs = loadDataset(fixture('crlf-docs.txt', '\uFEFFalpha\r\nbeta\r\n\r\ngamma\r\n'), { kind: 'documents' });
    expect(docs.records.map((r) => r.prompt)).toEqual(['alpha\nbeta', 'gamma']);
    const arr = loadDataset(fixture('bom.json', '\uFEFF' + JSON.stringify(GSM)));
    expect(arr.records).toHaveLength(3);
  });

  it('limit keeps the first N records of every kind of file', () => {
    const j = loadDataset(fixture('lim.jsonl', jsonl(GSM)), { limit: 2 });
    expect(j.records.map((r) => r.prompt)).toEqual(['What is 2 + 3?', 'What is 4 * 6?']);
    expect(j.description).toBe('lim.jsonl: 2 GSM8K records (question), first 2');
    expect(loadDataset(fixture('lim.json', JSON.stringify(GSM)), { limit: 1 }).records).toHaveLength(1);
    expect(loadDataset(fixture('lim.txt', 'a\nb\nc\n'), { limit: 2 }).records.map((r) => r.prompt)).toEqual(['a', 'b']);
    expect(loadDataset(fixture('lim-docs.txt', 'a\n\nb\n\nc'), { kind: 'documents', limit: 2 }).records).toHaveLength(2);
    expect(loadDataset(fixture('lim-big.jsonl', jsonl(GSM)), { limit: 100 }).records).toHaveLength(3);
  });

  it('lines after the limit are not parsed', () => {
    const file = fixture('lim-bad.jsonl', `${JSON.stringify(GSM[0])}\n{broken\n`);
    expect(loadDataset(file, { limit: 1 }).records).toHaveLength(1);
    expect(caught(() => loadDataset(file)).code).toBe('E_FORMAT');
  });
});

describe('loadDataset: errors', () => {
  it('a missing file is E_IO naming the path', () => {
    const file = path.join(dir, 'nope.jsonl');
    const err = caught(() => loadDataset(file));
    expect(err.code).toBe('E_IO');
    expect(err.message).toContain(file);
    expect(err.message).toContain('no such file');
  });

  it('a directory is E_IO', () => {
    const sub = path.join(dir, 'adir.jsonl');
    mkdirSync(sub);
    const err = caught(() => loadDataset(sub));
    expect(err.code).toBe('E_IO');
    expect(err.message).toContain(sub);
    expect(err.message).toContain('directory');
  });

  it('an empty file or one with no records is E_VALUE "no records"', () => {
    for (const [name, content] of [['empty.jsonl', ''], ['empty.txt', ''], ['blank.txt', '\n  \n\n'], ['empty.json', '[]'],
      ['blank.jsonl', '\n\n'], ['bom-only.txt', '\uFEFF']] as const) {
      const err = caught(() => loadDataset(fixture(name, content)));
      expect(err.code, name).toBe('E_VALUE');
      expect(err.message).toContain(name);
      expect(err.message).toContain('no records');
    }
    const err = caught(() => loadDataset(fixture('empty-docs.txt', '\n\n'), { kind: 'documents' }));
    expect(err.code).toBe('E_VALUE');
  });

  it('invalid JSON on a JSONL line is E_FORMAT naming FILE:LINE and the parser message', () => {
    const file = fixture('broken.jsonl', `${JSON.stringify(GSM[0])}\n${JSON.stringify(GSM[1])}\n{"question": "x", \n`);
    const err = caught(() => loadDataset(file));
    expect(err.code).toBe('E_FORMAT');
    expect(err.message).toContain('broken.jsonl:3:');
    expect(err.message).toMatch(/invalid JSON \(.+\)/);
  });

  it('a blank line counts in the line number', () => {
    const err = caught(() => loadDataset(fixture('gap.jsonl', `${JSON.stringify(GSM[0])}\n\n[1, 2]\n`)));
    expect(err.code).toBe('E_FORMAT');
    expect(err.message).toContain('gap.jsonl:3:');
    expect(err.message).toContain('expected a JSON object');
    expect(err.message).toContain('an Array of length 2');
  });

  it('a later line without the field of the first is E_FORMAT naming the line and the field', () => {
    const err = caught(() => loadDataset(fixture('missing.jsonl', jsonl([GSM[0], GSM[1], { q: 'x', answer: 'y' }]))));
    expect(err.code).toBe('E_FORMAT');
    expect(err.message).toContain('missing.jsonl:3:');
    expect(err.message).toContain('"question"');
    expect(err.message).toContain('keys q, answer');
  });

  it('a non-string field is E_FORMAT naming the line, the field and the value', () => {
    const err = caught(() => loadDataset(fixture('nonstring.jsonl', jsonl([GSM[0], { question: 42, answer: 'y' }]))));
    expect(err.code).toBe('E_FORMAT');
    expect(err.message).toContain('nonstring.jsonl:2:');
    expect(err.message).toContain('"question": expected a string, received 42');
    const ans = caught(() => loadDataset(fixture('nonstring-answer.jsonl', jsonl([GSM[0], GSM[1], { question: 'q', answer: 7 }]))));
    expect(ans.message).toContain('nonstring-answer.jsonl:3:');
    expect(ans.message).toContain('"answer"');
    const inst = caught(() => loadDataset(fixture('bad-inst.jsonl', jsonl([ALPACA[0], { instruction: 'i', instances: 'no' }]))));
    expect(inst.code).toBe('E_FORMAT');
    expect(inst.message).toContain('bad-inst.jsonl:2:');
    expect(inst.message).toContain('"instances"');
    const out = caught(() => loadDataset(fixture('bad-out.jsonl', jsonl([ALPACA[0], { instruction: 'i', instances: [{ output: 3 }] }]))));
    expect(out.message).toContain('bad-out.jsonl:2:');
    expect(out.message).toContain('"output": expected a string, received 3');
  });

  it('a first record with no known field is E_FORMAT on line 1', () => {
    const err = caught(() => loadDataset(fixture('unknown.jsonl', jsonl([{ foo: 1, bar: 2 }]))));
    expect(err.code).toBe('E_FORMAT');
    expect(err.message).toContain('unknown.jsonl:1:');
    expect(err.message).toContain('question, prompt, instruction or text');
    expect(err.message).toContain('keys foo, bar');
  });

  it('.json: invalid JSON, a non-array and a bad element are E_FORMAT naming the file (and index)', () => {
    const bad = caught(() => loadDataset(fixture('bad.json', '[{"question": "a"},')));
    expect(bad.code).toBe('E_FORMAT');
    expect(bad.message).toContain('bad.json');
    expect(bad.message).toContain('invalid JSON');
    const obj = caught(() => loadDataset(fixture('obj.json', JSON.stringify({ data: GSM }))));
    expect(obj.code).toBe('E_FORMAT');
    expect(obj.message).toContain('obj.json: expected a JSON array of records, received an object');
    const el = caught(() => loadDataset(fixture('el.json', JSON.stringify([GSM[0], GSM[1], { question: null }]))));
    expect(el.code).toBe('E_FORMAT');
    expect(el.message).toContain('el.json: [2]');
    expect(el.message).toContain('"question"');
    const first = caught(() => loadDataset(fixture('first.json', JSON.stringify(['just a string']))));
    expect(first.message).toContain('first.json: [0]');
  });

  it('a bad limit is E_VALUE naming limit', () => {
    const file = fixture('ok.txt', 'a\n');
    for (const limit of [0, -1, 1.5, NaN, Infinity, '2']) {
      const err = caught(() => loadDataset(file, { limit: limit as number }));
      expect(err.code, String(limit)).toBe('E_VALUE');
      expect(err.message).toContain('limit');
    }
  });

  it('bad arguments are E_ARG (or E_VALUE for an unknown kind)', () => {
    const file = fixture('ok2.txt', 'a\n');
    expect(caught(() => loadDataset(42 as unknown as string)).code).toBe('E_ARG');
    expect(caught(() => loadDataset('')).code).toBe('E_ARG');
    expect(caught(() => loadDataset(file, { limt: 1 } as never)).message).toContain('opts.limt');
    expect(caught(() => loadDataset(file, { kind: 'docs' as never })).code).toBe('E_VALUE');
    expect(caught(() => documentText({ prompt: 'a', completion: '' }, 'csv' as DatasetShape)).code).toBe('E_ARG');
    expect(caught(() => promptText({ prompt: 1 } as never, 'lines')).message).toContain('record.prompt');
  });
});

describe('documentText / promptText', () => {
  it('the prompt is an exact prefix of the document for every shape', () => {
    const records = [
      { prompt: 'q', completion: 'a' }, { prompt: 'q', completion: '' }, { prompt: 'i', completion: 'o', input: 'x' },
      { prompt: '', completion: '' }, { prompt: 'line\nline', completion: ' tail' },
    ];
    for (const shape of DATASET_SHAPES) {
      for (const r of records) expect(documentText(r, shape).startsWith(promptText(r, shape)), `${shape} ${JSON.stringify(r)}`).toBe(true);
    }
  });

  it('no trailing space after "Answer:" or "Response:" when the completion is empty', () => {
    expect(documentText({ prompt: 'q', completion: '' }, 'gsm8k')).toBe('Question: q\nAnswer:');
    expect(documentText({ prompt: 'i', completion: '' }, 'alpaca')).toBe('Instruction: i\nResponse:');
  });
});

describe('public datasets in ../shared/data (skipped where absent)', () => {
  const at = (f: string): string => path.join(shared, f);

  it.skipIf(!existsSync(at('gsm8k-test.jsonl')))('gsm8k-test.jsonl: 1319 GSM8K records', () => {
    const ds = loadDataset(at('gsm8k-test.jsonl'));
    expect(ds.shape).toBe('gsm8k');
    expect(ds.records).toHaveLength(1319);
    expect(ds.description).toBe('gsm8k-test.jsonl: 1319 GSM8K records (question)');
    expect(ds.records.every((r) => r.prompt !== '' && r.completion.includes('####'))).toBe(true);
    expectPrefixes(ds);
  });

  it.skipIf(!existsSync(at('gsm8k-train.jsonl')))('gsm8k-train.jsonl: 7473 GSM8K records', () => {
    expect(loadDataset(at('gsm8k-train.jsonl')).description).toBe('gsm8k-train.jsonl: 7473 GSM8K records (question)');
  });

  it.skipIf(!existsSync(at('humaneval.jsonl')))('humaneval.jsonl: 164 HumanEval records', () => {
    const ds = loadDataset(at('humaneval.jsonl'));
    expect(ds.shape).toBe('humaneval');
    expect(ds.records).toHaveLength(164);
    expect(ds.records.every((r) => r.prompt.includes('def ') && r.completion !== '')).toBe(true);
    expectPrefixes(ds);
  });

  it.skipIf(!existsSync(at('alpaca-seed-tasks.jsonl')))('alpaca-seed-tasks.jsonl: 175 Alpaca records', () => {
    const ds = loadDataset(at('alpaca-seed-tasks.jsonl'));
    expect(ds.shape).toBe('alpaca');
    expect(ds.records).toHaveLength(175);
    expect(ds.records.some((r) => r.input !== undefined)).toBe(true);
    expectPrefixes(ds);
  });

  it.skipIf(!existsSync(at('tinyshakespeare.txt')))('tinyshakespeare.txt: lines as prompts, blocks as documents', () => {
    expect(loadDataset(at('tinyshakespeare.txt')).shape).toBe('lines');
    const docs = loadDataset(at('tinyshakespeare.txt'), { kind: 'documents', limit: 5 });
    expect(docs.shape).toBe('text');
    expect(docs.records).toHaveLength(5);
    expect(docs.records[0]!.prompt.startsWith('First Citizen:\n')).toBe(true);
  });
});
