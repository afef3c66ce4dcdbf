/**
 * bench(): the temperature study with its outputs: results.jsonl (one record per cell:
 * configuration, package version, machine, summary and raw per-run numbers) and
 * summary.json (every cell's summary), written to `out`.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadDataset, promptText } from '../data/dataset.js';
import { SpeculaError, withCallerStack } from '../errors.js';
import { runtimeInfo } from '../runtime.js';
import { fail, isIntegerIn, knownKeys, object } from '../validate.js';
import { EMBEDDED_PROMPTS } from './prompts.js';
import { gridCells, runStudy, shardCells, type CellResult, type CellSummary } from './study.js';

export const DEFAULT_TEMPERATURES = [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2];
export const RESULTS_SCHEMA_ID = 'specula-bench-results/1';

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
  /** Output directory (created). */
  out: string;
  /** Run shard index of count. */
  shard?: { index: number; count: number };
  onStart?: (info: { prompts: string; cells: number; runs: number }) => void;
  onProgress?: (done: number, total: number) => void;
}

export interface MachineInfo {
  cpu: string;
  cores: number;
  threads: number;
  simd: string;
  backend: 'cpu';
  platform: string;
  node: string;
}

export interface CellRecord {
  schema: typeof RESULTS_SCHEMA_ID;
  version: string;
  machine: MachineInfo;
  config: {
    target: string; draft: string; temperature: number; gamma: number; maxNewTokens: number; seeds: number;
    prompts: { source: string; count: number }; cell: number; cells: number; shard: { index: number; count: number } | null;
  };
  summary: CellSummary;
  runs: CellResult['runs'];
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

/** Runs the study (or one shard of it) and writes results.jsonl and summary.json to `out`. */
export async function bench(opts: BenchOptions): Promise<{ records: CellRecord[]; out: string }> {
  const caller = new Error();
  try {
    const o = object('opts', opts);
    knownKeys('opts', o, ['target', 'drafts', 'dataset', 'temperatures', 'gammas', 'prompts', 'maxNewTokens', 'seeds', 'out', 'shard',
      'onStart', 'onProgress']);
    if (typeof o.out !== 'string' || o.out === '') fail('E_ARG', 'out', 'a directory path', o.out);
    const bundled = o.target === undefined || o.drafts === undefined ? bundledPair() : null;
    const target = (o.target as string | undefined) ?? bundled!.target;
    const drafts = (o.drafts as string[] | undefined) ?? bundled!.drafts;
    if (drafts.length === 0) fail('E_VALUE', 'drafts', 'at least one draft directory', drafts);
    const temperatures = numbers('temperatures', o.temperatures ?? DEFAULT_TEMPERATURES, false, 0);
    const gammas = numbers('gammas', o.gammas ?? [4], true, 1);
    const seeds = o.seeds ?? 4;
    if (!isIntegerIn(seeds, 1, 1e6)) fail('E_VALUE', 'seeds', 'an integer in [1, 1000000]', seeds);
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
    opts.onStart?.({ prompts: source, cells: cells.length, runs: (cells.length + temps) * prompts.length * seeds });
    const results = await runStudy({
      target, drafts, temperatures, gammas, prompts, seeds, maxNewTokens, cells,
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
    });
    const machine = machineInfo();
    const version = runtimeInfo().version;
    const records: CellRecord[] = results.map((c) => ({
      schema: RESULTS_SCHEMA_ID, version, machine,
      config: {
        target, draft: c.draft, temperature: c.temperature, gamma: c.gamma, maxNewTokens, seeds,
        prompts: { source, count: prompts.length }, cell: c.index, cells: all.length, shard: shard ?? null,
      },
      summary: c.summary, runs: c.runs,
    }));
    await mkdir(o.out as string, { recursive: true });
    await writeFile(path.join(o.out as string, 'results.jsonl'), records.map((r) => JSON.stringify(r)).join('\n') + '\n');
    await writeFile(path.join(o.out as string, 'summary.json'), `${JSON.stringify({
      version, machine, target, drafts, temperatures, gammas, seeds, maxNewTokens, prompts: { source, count: prompts.length },
      cells: records.map((r) => ({ draft: r.config.draft, temperature: r.config.temperature, gamma: r.config.gamma, ...r.summary })),
    }, null, 2)}\n`);
    return { records, out: o.out as string };
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}
