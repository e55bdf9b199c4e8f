'use strict';
// WebSocket clients for the tests and the benchmark: a well-behaved one that
// acknowledges what it receives, and a raw one that stops reading.

const net = require('node:net');
const WebSocket = require('ws');
const { createAcker } = require('../../web/acker');

/**
 * Connect to `url`; resolves once the snapshot arrived. `onUpdate(update,
 * client)` receives every live update after it was recorded in client.sequences.
 */
function connectClient(url, { onUpdate = null, keepUpdates = false, headers } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false });
    const client = { ws, sequences: [], updates: [], snapshot: null, closeCode: null };
    client.closed = new Promise((done) => {
      ws.on('close', (code, reason) => {
        client.closeCode = code;
        client.closeReason = reason.toString();
        client.acker?.stop();
        done(code);
      });
    });
    ws.on('error', reject);
    ws.on('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk) => {
        body += chunk;
      });
      response.on('end', () => reject(Object.assign(new Error(`HTTP ${response.statusCode}: ${body.trim()}`), { status: response.statusCode, body })));
    });
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString());
      if (message.type === 'snapshot') {
        client.snapshot = message;
        client.acker = createAcker((text) => ws.send(text), { window: message.window });
        resolve(client);
        return;
      }
      client.sequences.push(message.sequence);
      if (keepUpdates) client.updates.push(message);
      client.acker.received(message.sequence);
      onUpdate?.(message, client);
    });
  });
}

/**
 * Open a WebSocket with a hand-written handshake, then stop reading: the
 * kernel buffers what the server sends until it is resumed, and no
 * acknowledgement is ever sent.
 */
function connectStalledClient(port, path = '/ws') {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
      );
    });
    socket.once('error', reject);
    let received = '';
    const onData = (chunk) => {
      received += chunk.toString('latin1');
      // Wait for the handshake and the snapshot frame, then stop reading.
      if (received.includes('\r\n\r\n') && received.includes('"type":"snapshot"')) {
        socket.off('data', onData);
        socket.pause();
        resolve(socket);
      }
    };
    socket.on('data', onData);
  });
}

module.exports = { connectClient, connectStalledClient };
