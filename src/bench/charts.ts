/**
 * The study's charts: measured speedup vs temperature and realized acceptance α vs
 * temperature, one line per draft (per draft and γ when several γ were run), each with
 * its 95% confidence band. Specified in Vega-Lite, rendered to SVG by Vega's headless
 * renderer and to PNG by resvg: no browser, no canvas, no native build step.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import type { CellSummary, Estimate } from './study.js';

export interface ChartCell {
  draft: string;
  temperature: number;
  gamma: number;
  summary: CellSummary;
}

export interface ChartContext {
  target: string;
  prompts: number;
  seeds: number;
  maxNewTokens: number;
}

interface Row {
  series: string;
  temperature: number;
  mean: number;
  lo: number;
  hi: number;
}

function rows(cells: readonly ChartCell[], pick: (s: CellSummary) => Estimate): Row[] {
  const gammas = new Set(cells.map((c) => c.gamma)).size;
  return cells.map((c) => {
    const e = pick(c.summary);
    const name = path.basename(c.draft);
    return { series: gammas > 1 ? `${name}, γ=${c.gamma}` : name, temperature: c.temperature, mean: e.mean, lo: e.lo, hi: e.hi };
  });
}

function lineWithBand(title: string, subtitle: string, yTitle: string, data: Row[], y: { zero: boolean; domain?: [number, number] },
  rule?: number): TopLevelSpec {
  const x = { field: 'temperature', type: 'quantitative', title: 'decoding temperature T', axis: { grid: true } } as const;
  const scale = { zero: y.zero, ...(y.domain ? { domain: y.domain } : {}) };
  const color = { field: 'series', type: 'nominal', title: 'draft', scale: { scheme: 'tableau10' } } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle, anchor: 'start' },
    width: 520,
    height: 320,
    background: 'white',
    config: { font: 'DejaVu Sans, Arial, Helvetica, sans-serif', legend: { orient: 'right', symbolType: 'stroke', symbolStrokeWidth: 3, symbolOpacity: 1 } },
    data: { values: data },
    layer: [
      { mark: { type: 'errorband', opacity: 0.18 }, encoding: { x, y: { field: 'lo', type: 'quantitative', title: yTitle, scale }, y2: { field: 'hi' }, color } },
      { mark: { type: 'line', point: true, strokeWidth: 2 }, encoding: { x, y: { field: 'mean', type: 'quantitative', title: yTitle, scale }, color } },
      ...(rule !== undefined ? [{ data: { values: [{ y: rule }] }, mark: { type: 'rule', strokeDash: [4, 4], color: '#666' }, encoding: { y: { field: 'y', type: 'quantitative' } } } as const] : []),
    ],
  } as TopLevelSpec;
}

/** The two Vega-Lite specifications (data inlined). */
export function chartSpecs(cells: readonly ChartCell[], ctx: ChartContext): { speedup: TopLevelSpec; acceptance: TopLevelSpec } {
  const gammas = [...new Set(cells.map((c) => c.gamma))].sort((a, b) => a - b);
  const sub = `target: ${path.basename(ctx.target)}; γ = ${gammas.join(', ')}; ${ctx.prompts} prompts × ${ctx.seeds} seeds × ${ctx.maxNewTokens} tokens; bands: 95% CI`;
  return {
    speedup: lineWithBand('Speculative speedup over the target alone', sub, 'speedup (tokens/s ÷ autoregressive tokens/s)',
      rows(cells, (s) => s.speedup), { zero: false }, 1),
    acceptance: lineWithBand('Acceptance rate α while generating', sub, 'realized acceptance α (accepted ÷ drafted)',
      rows(cells, (s) => s.alpha), { zero: false }),
  };
}

/** Renders a Vega-Lite specification to SVG text. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rasterises SVG text to PNG at `scale` × its size, with the system's fonts. */
export async function svgToPng(svg: string, scale = 2): Promise<Buffer> {
  const { Resvg } = await import('@resvg/resvg-js');
  const r = new Resvg(svg, { fitTo: { mode: 'zoom', value: scale }, font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' } });
  return r.render().asPng();
}

/** Writes speedup.{svg,png} and acceptance.{svg,png} to `out`; returns the paths written. */
export async function writeCharts(out: string, cells: readonly ChartCell[], ctx: ChartContext): Promise<string[]> {
  const specs = chartSpecs(cells, ctx);
  const written: string[] = [];
  for (const [name, spec] of Object.entries(specs)) {
    const svg = await renderSvg(spec);
    const png = await svgToPng(svg);
    for (const [ext, body] of [['svg', svg], ['png', png]] as const) {
      const file = path.join(out, `${name}.${ext}`);
      await writeFile(file, body);
      written.push(file);
    }
  }
  return written;
}
