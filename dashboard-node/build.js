'use strict';
// Build the page into dist/: web/app.js bundled with Chart.js by esbuild,
// plus index.html and app.css copied as they are. `node build.js`.

const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');

const root = __dirname;
const dist = path.join(root, 'dist');

async function build() {
  fs.mkdirSync(dist, { recursive: true });
  await esbuild.build({
    entryPoints: [path.join(root, 'web', 'app.js')],
    bundle: true,
    minify: true,
    sourcemap: false,
    format: 'iife',
    target: ['es2020'],
    outfile: path.join(dist, 'app.js'),
    legalComments: 'eof',
    logLevel: 'warning',
  });
  for (const file of ['index.html', 'app.css']) {
    fs.copyFileSync(path.join(root, 'web', file), path.join(dist, file));
  }
  const size = fs.statSync(path.join(dist, 'app.js')).size;
  process.stdout.write(`build: dist/app.js (${Math.round(size / 1024)} KiB), index.html, app.css\n`);
}

build().catch((error) => {
  process.stderr.write(`build: ${error.message}\n`);
  process.exit(1);
});
