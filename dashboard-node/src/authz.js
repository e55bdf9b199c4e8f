'use strict';
// Call-level authorization: the OPA beside the workload decides every call.
//
// The same contract as services/runtime/aiswa_runtime/_authz.py: the caller
// comes from l5d-client-id only (the sidecar sets it to the verified peer),
// the input is {"caller", "destination", "method", "claims"?} with claims only
// for calls from the gateway, the answer must be {"allow": bool, "reason":
// string} at /v1/data/aiswa/authz/result, and any other result (a timeout, a
// connection error, an HTTP error, a malformed answer) is a denial.

const grpc = require('@grpc/grpc-js');

const CALLER_HEADER = 'l5d-client-id';
const JWT_PAYLOAD_HEADER = 'x-jwt-payload';
const DECISION_PATH = '/v1/data/aiswa/authz/result';
// Every fail-closed denial starts with this, so callers and alerts can tell an
// outage of OPA from a policy decision.
const UNAVAILABLE = 'authorization service unavailable';

function decodeClaims(value) {
  let payload;
  try {
    payload = JSON.parse(Buffer.from(value, 'base64url').toString('utf8'));
  } catch (error) {
    throw new Error(`it is not base64url JSON (${error.message})`);
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw new Error(`it is JSON ${Array.isArray(payload) ? 'array' : typeof payload}, not an object`);
  }
  return payload;
}

class Authorizer {
  /**
   * `onDenied(denial)` is called with {caller, method, reason, kind} for
   * every denial, after it is counted and logged.
   */
  constructor({ destination, opaUrl, timeoutMs = 250, namespace = 'aiswa', log, metrics = null, onDenied = null }) {
    if (!(timeoutMs > 0)) throw new RangeError(`timeout ${timeoutMs} ms is invalid; give more than 0`);
    this.destination = destination;
    this.opaUrl = opaUrl.replace(/\/+$/, '');
    this.timeoutMs = timeoutMs;
    this.gateway = `gateway.${namespace}.serviceaccount.identity.linkerd.cluster.local`;
    this.log = log;
    this.metrics = metrics;
    this.onDenied = onDenied;
  }

  /** Decide one call and record a denial; resolves to {allow, reason, kind}. */
  async check(method, caller, claimsHeader, timeoutMs = this.timeoutMs) {
    const decision = await this.decide(method, caller, claimsHeader, timeoutMs);
    if (!decision.allow) {
      this.metrics?.inc('aiswa_authz_denials_total', {
        destination: this.destination,
        method,
        reason_kind: decision.kind,
      });
      const level = decision.kind === 'policy' || decision.kind === 'invalid_claims' ? 'warn' : 'error';
      this.log[level](
        { caller, method, destination: this.destination, reason: decision.reason, reason_kind: decision.kind, opa_url: this.opaUrl },
        'call denied',
      );
      this.onDenied?.({ caller, method, reason: decision.reason, kind: decision.kind });
    }
    return decision;
  }

  /** Ask OPA about one call; a missing or invalid decision is a denial. */
  async decide(method, caller, claimsHeader, timeoutMs = this.timeoutMs) {
    const input = { caller, destination: this.destination, method };
    if (caller === this.gateway && claimsHeader) {
      try {
        input.claims = decodeClaims(claimsHeader);
      } catch (error) {
        return { allow: false, reason: `the gateway's ${JWT_PAYLOAD_HEADER} header is invalid: ${error.message}`, kind: 'invalid_claims' };
      }
    }
    return this.ask(input, timeoutMs);
  }

  async ask(input, timeoutMs) {
    let status;
    let text;
    try {
      // Node's fetch takes no proxy from the environment, so the request stays on loopback.
      const response = await fetch(this.opaUrl + DECISION_PATH, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ input }),
        signal: AbortSignal.timeout(Math.max(1, Math.round(timeoutMs))),
      });
      status = response.status;
      text = await response.text();
    } catch (error) {
      if (error.name === 'TimeoutError' || error.name === 'AbortError') {
        return { allow: false, reason: `${UNAVAILABLE}: the request to OPA timed out after ${Math.round(timeoutMs)} ms`, kind: 'timeout' };
      }
      const cause = error.cause ? `${error.cause.code || error.cause.name}: ${error.cause.message}` : error.message;
      return { allow: false, reason: `${UNAVAILABLE}: the request to OPA failed: ${cause}`, kind: 'unreachable' };
    }
    if (status !== 200) {
      return { allow: false, reason: `${UNAVAILABLE}: OPA returned HTTP ${status}: ${text.slice(0, 200)}`, kind: 'opa_error' };
    }
    let result;
    try {
      result = JSON.parse(text).result;
    } catch {
      result = undefined;
    }
    if (!result || typeof result !== 'object' || typeof result.allow !== 'boolean' || typeof result.reason !== 'string') {
      return {
        allow: false,
        reason: `${UNAVAILABLE}: OPA returned no {"allow": bool, "reason": string} at ${DECISION_PATH}: ${text.slice(0, 200)}`,
        kind: 'invalid_response',
      };
    }
    return { allow: result.allow, reason: result.reason, kind: result.allow ? 'allowed' : 'policy' };
  }
}

function firstValue(metadata, key) {
  const value = metadata.get(key)[0];
  if (value === undefined) return '';
  return Buffer.isBuffer(value) ? value.toString() : value;
}

function remainingMs(call, fallback) {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return fallback;
  return Math.max(Math.min(fallback, at - Date.now()), 1);
}

/**
 * A @grpc/grpc-js server interceptor that lets a call reach its handler only
 * when `authorizer` allows it, and ends it with PERMISSION_DENIED and the
 * policy's reason otherwise. The request waits, buffered by grpc-js, until
 * the decision arrives.
 */
function authorizationInterceptor(authorizer) {
  return (methodDescriptor, call) => {
    const method = methodDescriptor.path;
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const caller = firstValue(metadata, CALLER_HEADER);
        const claims = firstValue(metadata, JWT_PAYLOAD_HEADER);
        authorizer
          .check(method, caller, claims, remainingMs(call, authorizer.timeoutMs))
          .then((decision) => {
            if (decision.allow) next(metadata);
            else call.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: decision.reason, metadata: new grpc.Metadata() });
          })
          .catch((error) => {
            authorizer.log.error({ err: error, method }, 'authorization check failed');
            call.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: `${UNAVAILABLE}: ${error.message}`, metadata: new grpc.Metadata() });
          });
      })
      .build();
    const responder = new grpc.ResponderBuilder().withStart((next) => next(listener)).build();
    return new grpc.ServerInterceptingCall(call, responder);
  };
}

/** Authorize a WebSocket upgrade as a call of `method`, from the request's headers. */
function authorizeRequest(authorizer, method) {
  return (request) => {
    const header = (name) => {
      const value = request.headers[name];
      return Array.isArray(value) ? value[0] : value || '';
    };
    return authorizer.check(method, header(CALLER_HEADER), header(JWT_PAYLOAD_HEADER));
  };
}

module.exports = {
  Authorizer,
  authorizationInterceptor,
  authorizeRequest,
  CALLER_HEADER,
  JWT_PAYLOAD_HEADER,
  DECISION_PATH,
  UNAVAILABLE,
};
