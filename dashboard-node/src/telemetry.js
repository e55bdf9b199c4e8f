'use strict';
// OpenTelemetry tracing, configured like the Python runtime
// (aiswa_runtime/_telemetry.py): AISWA_TRACE_EXPORTER none, console, otlp
// or file. Call configureTracing() before @grpc/grpc-js or node:http is
// loaded, so that their instrumentation can patch them.

const fs = require('node:fs');
const path = require('node:path');
const { ExportResultCode, hrTimeToMicroseconds } = require('@opentelemetry/core');

let provider = null;

class JsonLinesSpanExporter {
  constructor(file) {
    this.file = file;
    fs.mkdirSync(path.dirname(file), { recursive: true });
  }

  export(spans, done) {
    const lines = spans.map((span) => {
      const context = span.spanContext();
      return JSON.stringify({
        name: span.name,
        context: { trace_id: context.traceId, span_id: context.spanId },
        parent_id: span.parentSpanContext?.spanId || null,
        kind: span.kind,
        start_time_us: hrTimeToMicroseconds(span.startTime),
        end_time_us: hrTimeToMicroseconds(span.endTime),
        status: span.status,
        attributes: span.attributes,
        resource: span.resource.attributes,
      });
    });
    fs.appendFile(this.file, `${lines.join('\n')}\n`, (error) =>
      done({ code: error ? ExportResultCode.FAILED : ExportResultCode.SUCCESS, error }));
  }

  shutdown() {
    return Promise.resolve();
  }
}

/** Install the tracer provider and the gRPC and HTTP instrumentation. */
function configureTracing(config) {
  if (provider || config.traceExporter === 'none') return null;
  const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
  const { BatchSpanProcessor, SimpleSpanProcessor, ConsoleSpanExporter } = require('@opentelemetry/sdk-trace-base');
  const { resourceFromAttributes } = require('@opentelemetry/resources');
  const { registerInstrumentations } = require('@opentelemetry/instrumentation');
  const { GrpcInstrumentation } = require('@opentelemetry/instrumentation-grpc');
  const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');

  let processor;
  if (config.traceExporter === 'console') {
    processor = new BatchSpanProcessor(new ConsoleSpanExporter());
  } else if (config.traceExporter === 'file') {
    processor = new SimpleSpanProcessor(new JsonLinesSpanExporter(config.traceFile));
  } else {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
    const endpoint = config.traceEndpoint.replace(/^https?:\/\//, '');
    processor = new BatchSpanProcessor(new OTLPTraceExporter({ url: `http://${endpoint}` }));
  }
  provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': config.service, 'service.namespace': config.namespace }),
    spanProcessors: [processor],
  });
  provider.register();
  registerInstrumentations({
    tracerProvider: provider,
    instrumentations: [
      // The OTLP exporter's own Export calls would otherwise trace themselves.
      new GrpcInstrumentation({ ignoreGrpcMethods: ['Export'] }),
      new HttpInstrumentation({ ignoreIncomingRequestHook: (request) => request.url === '/healthz' }),
    ],
  });
  return provider;
}

async function shutdownTracing() {
  if (provider) await provider.shutdown();
  provider = null;
}

module.exports = { configureTracing, shutdownTracing };
