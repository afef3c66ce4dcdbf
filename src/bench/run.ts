/**
 * bench(): the temperature study with its outputs: results.jsonl (one record per cell:
 * configuration, package version, machine, summary and raw per-run numbers; format in
 * schema.ts), summary.json (every cell's summary) and the charts, written to `out`.
 * merge(): the same outputs from the shards of a study.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadDataset, promptText } from '../data/dataset.js';
import { SpeculaError, withCallerStack } from '../errors.js';
import { runtimeInfo } from '../runtime.js';
import { fail, isIntegerIn, knownKeys, object } from '../validate.js';
import { EMBEDDED_PROMPTS } from './prompts.js';
import { writeCharts } from './charts.js';
import { CellRecordSchema, RESULTS_SCHEMA_ID, type CellRecord, type MachineInfo } from './schema.js';
import { gridCells, runStudy, shardCells } from './study.js';

export const DEFAULT_TEMPERATURES = [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2];
export { RESULTS_SCHEMA_ID, type CellRecord, type MachineInfo };

const modelsDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'models');

/** The bundled target and every bundled draft (models/target, models/draft-*). */
export function bundledPair(): { target: string; drafts: string[] } {
  const target = path.join(modelsDir, 'target');
  if (!existsSync(path.join(target, 'config.json'))) {
    throw new SpeculaError('E_IO', `the bundled models are missing (${modelsDir}); pass --target and --draft`);
  }
  const drafts = readdirSync(modelsDir).filter((d) => d.startsWith('draft-')).sort().map((d) => path.join(modelsDir, d));
  return { target, drafts };
}

export interface BenchOptions {
  target?: string;
  drafts?: string[];
  /** A prompt file (loadDataset shapes); default: the embedded prompt set. */
  dataset?: string;
  temperatures?: number[];
  gammas?: number[];
  /** Prompts used (default: all of the embedded set, or 32 of a dataset). */
  prompts?: number;
  maxNewTokens?: number;
  seeds?: number;
  /** End runs at the end-of-sequence token (default false: every run generates exactly maxNewTokens). */
  stopAtEos?: boolean;
  /** Output directory (created). */
  out: string;
  /** Run shard index of count. */
  shard?: { index: number; count: number };
  onStart?: (info: { prompts: string; cells: number; runs: number }) => void;
  onProgress?: (done: number, total: number) => void;
  /** Messages for the user (prompts cut to fit the context). */
  onNotice?: (message: string) => void;
}

export function machineInfo(): MachineInfo {
  const info = runtimeInfo();
  return {
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown', cores: info.availableCores, threads: info.threads, simd: info.simd, backend: 'cpu',
    platform: `${os.platform()}-${os.arch()}`, node: process.version,
  };
}

function numbers(name: string, v: unknown, integer: boolean, min: number): number[] {
  if (!Array.isArray(v) || v.length === 0 || v.some((x) => typeof x !== 'number' || !Number.isFinite(x) || x < min || (integer && !Number.isInteger(x)))) {
    fail('E_VALUE', name, `a non-empty array of ${integer ? 'integers' : 'numbers'} >= ${min}`, v);
  }
  return v as number[];
}

export interface BenchOutput {
  records: CellRecord[];
  out: string;
  /** Every file written: results.jsonl, summary.json and the charts (SVG and PNG). */
  files: string[];
}

/** The summary of a set of records (a whole study, a shard or a merge): summary.json. */
export function summaryOf(records: readonly CellRecord[]): Record<string, unknown> {
  const c = records[0]!.config;
  const machines = [...new Map(records.map((r) => [JSON.stringify(r.machine), r.machine])).values()];
  const versions = [...new Set(records.map((r) => r.version))];
  return {
    schema: RESULTS_SCHEMA_ID, version: versions.join(', '), machines,
    target: c.target, drafts: c.drafts, temperatures: c.temperatures, gammas: c.gammas, seeds: c.seeds, maxNewTokens: c.maxNewTokens, stopAtEos: c.stopAtEos,
    prompts: c.prompts, cells: records.length, gridCells: c.cells, shard: c.shard,
    results: records.map((r) => ({ draft: r.config.draft, temperature: r.config.temperature, gamma: r.config.gamma, ...r.summary })),
  };
}

/** Writes results.jsonl, summary.json and the charts to `out`; returns the records in cell order and the files. */
async function writeOutputs(out: string, unsorted: readonly CellRecord[]): Promise<BenchOutput> {
  const records = [...unsorted].sort((a, b) => a.config.cell - b.config.cell);
  try {
    await mkdir(out, { recursive: true });
    const results = path.join(out, 'results.jsonl');
    const summary = path.join(out, 'summary.json');
    await writeFile(results, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
    await writeFile(summary, `${JSON.stringify(summaryOf(records), null, 2)}\n`);
    const c = records[0]!.config;
    const charts = await writeCharts(out, records.map((r) => ({ draft: r.config.draft, temperature: r.config.temperature, gamma: r.config.gamma, summary: r.summary })),
      { target: c.target, prompts: c.prompts.count, seeds: c.seeds, maxNewTokens: c.maxNewTokens });
    return { records, out, files: [results, summary, ...charts] };
  } catch (err) {
    if (err instanceof SpeculaError) throw err;
    throw new SpeculaError('E_IO', `cannot write the study's outputs to ${out}: ${(err as Error).message}`);
  }
}

/** Reads and validates one results.jsonl; errors name the file and line. */
export function readResults(file: string): CellRecord[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SpeculaError('E_IO', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const out: CellRecord[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (err) {
      throw new SpeculaError('E_FORMAT', `${file}:${i + 1}: not JSON (${(err as Error).message})`);
    }
    const r = CellRecordSchema.safeParse(v);
    if (!r.success) {
      const issue = r.error.issues[0]!;
      throw new SpeculaError('E_FORMAT', `${file}:${i + 1}: ${issue.path.join('.') || '(record)'}: ${issue.message} (expected a ${RESULTS_SCHEMA_ID} record)`);
    }
    out.push(r.data);
  });
  if (out.length === 0) throw new SpeculaError('E_FORMAT', `${file}: no records`);
  return out;
}

const GRID_KEYS = ['target', 'drafts', 'temperatures', 'gammas', 'maxNewTokens', 'stopAtEos', 'seeds', 'prompts', 'cells'] as const;

/**
 * Combines the outputs of `bench --shard i/n` runs (directories or results.jsonl paths)
 * into the results.jsonl, summary.json and charts of one unsharded run, written to `out`.
 * The shards must come from the same grid and cover each cell exactly once.
 */
export async function merge(inputs: readonly string[], out: string): Promise<BenchOutput> {
  const caller = new Error();
  try {
    if (!Array.isArray(inputs) || inputs.length === 0) fail('E_ARG', 'inputs', 'one or more shard output directories', inputs);
    if (typeof out !== 'string' || out === '') fail('E_ARG', 'out', 'a directory path', out);
    const byCell = new Map<number, { record: CellRecord; from: string }>();
    let first: { record: CellRecord; from: string } | undefined;
    for (const input of inputs) {
      const file = typeof input === 'string' && input.endsWith('.jsonl') ? input : path.join(String(input), 'results.jsonl');
      for (const record of readResults(file)) {
        first ??= { record, from: file };
        for (const k of GRID_KEYS) {
          if (JSON.stringify(record.config[k]) !== JSON.stringify(first.record.config[k])) {
            throw new SpeculaError('E_VALUE', `${file}: cell ${record.config.cell} has ${k} = ${JSON.stringify(record.config[k])} but ${first.from} has ${JSON.stringify(first.record.config[k])}; shards of one study share their grid`);
          }
        }
        const seen = byCell.get(record.config.cell);
        if (seen) throw new SpeculaError('E_VALUE', `cell ${record.config.cell} is in both ${seen.from} and ${file}; pass each shard once`);
        if (record.config.cell >= record.config.cells) throw new SpeculaError('E_FORMAT', `${file}: cell ${record.config.cell} is outside the grid of ${record.config.cells} cells`);
        byCell.set(record.config.cell, { record, from: file });
      }
    }
    const total = first!.record.config.cells;
    const missing = Array.from({ length: total }, (_, i) => i).filter((i) => !byCell.has(i));
    if (missing.length > 0) {
      const shard = first!.record.config.shard;
      const hint = shard ? `; with ${shard.count} shards, missing shard(s) ${[...new Set(missing.map((i) => i % shard.count))].map((i) => `${i}/${shard.count}`).join(', ')}` : '';
      throw new SpeculaError('E_VALUE', `the shards cover ${byCell.size} of ${total} cells; missing cells ${missing.slice(0, 20).join(', ')}${missing.length > 20 ? ', ...' : ''}${hint}`);
    }
    const records = [...byCell.values()].map(({ record }) => ({ ...record, config: { ...record.config, shard: null } }));
    return await writeOutputs(out, records);
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

/** Runs the study (or one shard of it) and writes results.jsonl, summary.json and the charts to `out`. */
export async function bench(opts: BenchOptions): Promise<BenchOutput> {
  const caller = new Error();
  try {
    const o = object('opts', opts);
    knownKeys('opts', o, ['target', 'drafts', 'dataset', 'temperatures', 'gammas', 'prompts', 'maxNewTokens', 'seeds', 'stopAtEos', 'out', 'shard',
      'onStart', 'onProgress', 'onNotice']);
    if (typeof o.out !== 'string' || o.out === '') fail('E_ARG', 'out', 'a directory path', o.out);
    const bundled = o.target === undefined || o.drafts === undefined ? bundledPair() : null;
    const target = (o.target as string | undefined) ?? bundled!.target;
    const drafts = (o.drafts as string[] | undefined) ?? bundled!.drafts;
    if (drafts.length === 0) fail('E_VALUE', 'drafts', 'at least one draft directory', drafts);
    const temperatures = numbers('temperatures', o.temperatures ?? DEFAULT_TEMPERATURES, false, 0);
    const gammas = numbers('gammas', o.gammas ?? [4], true, 1);
    const seeds = o.seeds ?? 4;
    if (!isIntegerIn(seeds, 1, 1e6)) fail('E_VALUE', 'seeds', 'an integer in [1, 1000000]', seeds);
    const stopAtEos = o.stopAtEos ?? false;
    if (typeof stopAtEos !== 'boolean') fail('E_ARG', 'stopAtEos', 'a boolean', stopAtEos);
    const maxNewTokens = o.maxNewTokens ?? 128;
    if (!isIntegerIn(maxNewTokens, 1, 1 << 20)) fail('E_VALUE', 'maxNewTokens', 'an integer >= 1', maxNewTokens);
    let prompts: string[];
    let source: string;
    if (o.dataset !== undefined) {
      const ds = loadDataset(o.dataset as string, { kind: 'prompts' });
      prompts = ds.records.map((r) => promptText(r, ds.shape));
      source = ds.description;
    } else {
      prompts = [...EMBEDDED_PROMPTS];
      source = `the embedded prompt set (${prompts.length} GSM8K-style math word problems)`;
    }
    const n = o.prompts ?? (o.dataset !== undefined ? Math.min(32, prompts.length) : prompts.length);
    if (!isIntegerIn(n, 1, prompts.length)) fail('E_VALUE', 'prompts', `an integer in [1, ${prompts.length}] (the prompts available)`, n);
    prompts = prompts.slice(0, n as number);
    const all = gridCells({ drafts, temperatures, gammas });
    const shard = o.shard as BenchOptions['shard'];
    const cells = shard ? shardCells(all, shard.index, shard.count) : all;
    const temps = new Set(cells.map((c) => c.temperature)).size;
    const results = await runStudy({
      target, drafts, temperatures, gammas, prompts, seeds, maxNewTokens, stopAtEos, cells,
      onPrompts: (cut) => {
        if (cut) {
          source += `; ${cut.count} cut to their last ${cut.keep} tokens to fit a ${cut.context}-token context with ${maxNewTokens} new tokens`;
          opts.onNotice?.(`${cut.count} of ${prompts.length} prompts are longer than ${cut.keep} tokens: each keeps its last ${cut.keep} tokens (context ${cut.context}, ${maxNewTokens} new tokens)`);
        }
        opts.onStart?.({ prompts: source, cells: cells.length, runs: (cells.length + temps) * prompts.length * seeds });
      },
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
    });
    const machine = machineInfo();
    const version = runtimeInfo().version;
    const records: CellRecord[] = results.map((c) => ({
      schema: RESULTS_SCHEMA_ID, version, machine,
      config: {
        target, draft: c.draft, temperature: c.temperature, gamma: c.gamma, maxNewTokens, stopAtEos, seeds,
        prompts: { source, count: prompts.length }, temperatures, gammas, drafts,
        cell: c.index, cells: all.length, shard: shard ?? null,
      },
      summary: c.summary, runs: c.runs,
    }));
    return await writeOutputs(o.out as string, records);
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}
