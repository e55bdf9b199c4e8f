'use strict';
// Free loopback ports for test fixtures, from 45000-45999 only.

const net = require('node:net');

function isFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** `count` consecutive free ports in [45000, 45999], starting at a random offset. */
async function freePorts(count, { low = 45000, high = 45999 } = {}) {
  const span = high - low + 1 - count;
  const start = Math.floor(Math.random() * span);
  for (let i = 0; i < span; i += 1) {
    const base = low + ((start + i) % span);
    let free = true;
    for (let port = base; port < base + count && free; port += 1) free = await isFree(port);
    if (free) return Array.from({ length: count }, (_, k) => base + k);
  }
  throw new Error(`no ${count} consecutive free ports in ${low}-${high}`);
}

module.exports = { freePorts };
