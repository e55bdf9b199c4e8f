'use strict';
// Runs the hub and WebSocket server in a child process, so that the server
// and a thousand clients use both cores. The fan-out test drives it over IPC.
// {burst: N} publishes N updates, one per event-loop turn, and {stats: true}
// replies with the drop and client counts.

const { setImmediate: turn } = require('node:timers/promises');
const { startWeb, event } = require('./web');

async function main() {
  const options = JSON.parse(process.argv[2] || '{}');
  const web = await startWeb(options);
  process.on('message', async (message) => {
    if (message.burst) {
      for (let i = 0; i < message.burst; i += 1) {
        web.hub.publish(event('run_progress', i));
        await turn();
      }
      process.send({ burstDone: true });
    } else if (message.stats) {
      process.send({ stats: { drops: web.web.drops, clients: web.web.clients.size, rss: process.memoryUsage().rss } });
    } else if (message.stop) {
      await web.stop();
      process.exit(0);
    }
  });
  process.send({ port: web.port });
}

main();
