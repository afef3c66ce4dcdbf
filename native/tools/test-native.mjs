#!/usr/bin/env node
// `npm run test:native`: configures the core library and its standalone C++ tests with
// CMake (no Node headers involved), builds them and runs them under CTest.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const build = path.join(root, 'build-native');
const jobs = String(Math.max(1, availableParallelism()));

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error) {
    console.error(`test:native: could not run ${cmd}: ${r.error.message} (CMake >= 3.19 and a C++17 compiler are needed)`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}

run('cmake', ['-S', root, '-B', build, '-DCMAKE_BUILD_TYPE=Release', ...process.argv.slice(2)]);
run('cmake', ['--build', build, '--parallel', jobs]);
run('ctest', ['--test-dir', build, '--output-on-failure', '--timeout', '600']);
