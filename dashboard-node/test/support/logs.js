'use strict';
// A logger whose JSON lines the tests can read back.

const { Writable } = require('node:stream');
const { createLogger } = require('../../src/log');

function captureLogger(level = 'DEBUG') {
  const lines = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  const log = createLogger({ service: 'dashboard', level, destination });
  return { log, lines, find: (message) => lines.filter((line) => line.message === message) };
}

module.exports = { captureLogger };
