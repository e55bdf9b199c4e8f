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

  let dashboard = null;
  let exiting = false;
  // The token or the RabbitMQ credentials are lost for good: a new secret id
  // comes only with a new process, so exit and let the supervisor restart it.
  const onFatal = async (error) => {
    if (exiting) return;
    exiting = true;
    log.fatal({ err: error }, 'OpenBao credentials lost; exiting so that the supervisor restarts the dashboard');
    setTimeout(() => process.exit(1), config.shutdownGraceMs + 1000).unref();
    await dashboard?.stop().catch((stopError) => log.error({ err: stopError }, 'stopping after the fatal error failed'));
    process.exit(1);
  };

  startDashboard(config, { log: root, onFatal }).then(
    (started) => {
      dashboard = started;
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
