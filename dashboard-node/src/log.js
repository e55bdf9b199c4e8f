'use strict';
// JSON log lines on stderr with the same field names as the Python services
// (time, level, name, message, service, trace_id), so one query reads all.

const pino = require('pino');
const { trace } = require('@opentelemetry/api');

const LEVELS = { DEBUG: 'debug', INFO: 'info', WARNING: 'warn', ERROR: 'error', CRITICAL: 'fatal' };
const NAMES = { trace: 'DEBUG', debug: 'DEBUG', info: 'INFO', warn: 'WARNING', error: 'ERROR', fatal: 'CRITICAL' };

/**
 * Create the root logger. `destination` defaults to stderr; tests pass a
 * stream to read the lines back.
 */
function createLogger({ service = 'dashboard', level = 'INFO', destination } = {}) {
  return pino(
    {
      level: LEVELS[level] || 'info',
      base: { service },
      messageKey: 'message',
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: (label) => ({ level: NAMES[label] || label.toUpperCase() }),
      },
      mixin() {
        const context = trace.getActiveSpan()?.spanContext();
        return context && context.traceId !== '00000000000000000000000000000000'
          ? { trace_id: context.traceId }
          : {};
      },
    },
    destination || pino.destination({ dest: 2, sync: true }),
  );
}

module.exports = { createLogger };
