'use strict';
// Run the dashboard: `node src/main.js`. Every setting comes from AISWA_*
// environment variables (see README.md). SIGTERM or SIGINT closes the streams
// and connections, waiting at most AISWA_SHUTDOWN_GRACE seconds.

const { loadConfig, ConfigError } = require('./config');

function main() {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`dashboard: ${error.message}\n`);
    process.exit(2);
  }
  // Tracing patches @grpc/grpc-js and node:http, so it comes before them.
  const { configureTracing, shutdownTracing } = require('./telemetry');
  configureTracing(config);
  const { createLogger } = require('./log');
  const { startDashboard } = require('./app');
  const root = createLogger({ service: config.service, level: config.logLevel });
  const log = root.child({ name: 'aiswa.dashboard' });

  process.on('uncaughtException', (error) => {
    log.fatal({ err: error }, 'uncaught exception; exiting');
    process.exit(1);
  });
  process.on('unhandledRejection', (error) => {
    log.fatal({ err: error }, 'unhandled promise rejection; exiting');
    process.exit(1);
  });

  startDashboard(config, { log: root }).then(
    (dashboard) => {
      const stop = async (signal) => {
        log.info({ signal }, 'signal received');
        await dashboard.stop();
        await shutdownTracing().catch((error) => log.warn({ err: error }, 'trace export at shutdown failed'));
        process.exit(0);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    },
    (error) => {
      log.fatal({ err: error }, 'dashboard failed to start');
      process.exit(1);
    },
  );
}

main();
