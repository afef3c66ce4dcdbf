#!/usr/bin/env node
// `npm run build:cmake [-- -DNAME=VALUE ...]`: builds the addon with cmake-js into
// build-cmake/Release/specula.node. cmake-js reads -D as --debug, so CMake definitions
// given the usual way (-DSPECULA_CUDA=ON) are passed on as --CDSPECULA_CUDA=ON.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2).map((a) => (/^-D[A-Za-z_][A-Za-z0-9_]*=/.test(a) ? `--CD${a.slice(2)}` : a));
const cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, 'compile', '--out', 'build-cmake', '--config', 'Release', ...args], {
  cwd: root,
  stdio: 'inherit',
});
if (r.error) {
  console.error(`build:cmake: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
