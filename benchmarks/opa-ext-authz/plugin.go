package main

// The plugin: configuration, the gRPC server's life cycle and Check, which
// builds the interceptor's input from Envoy's CheckRequest
// (services/runtime/aiswa_runtime/_authz.py does the same from gRPC metadata).

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/uuid"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/plugins/logs"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/server"
	"github.com/open-policy-agent/opa/v1/storage"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// PluginName is the key of this plugin's configuration under "plugins".
const PluginName = "aiswa_ext_authz"

// identityDomain ends every workload's DNS identity, as in l5d-client-id.
const identityDomain = ".serviceaccount.identity.linkerd.cluster.local"

// Config of the plugin, under plugins.aiswa_ext_authz in OPA's configuration.
type Config struct {
	// Addr is host:port or unix:///path of the gRPC listener.
	Addr string `json:"addr"`
	// Destination is the workload whose calls this OPA decides.
	Destination string `json:"destination"`
	// Query is the decision, a document with "allow" and "reason".
	Query string `json:"query"`
	// ClaimsHeader carries the end user's claims (base64url JSON) when the
	// caller is the gateway.
	ClaimsHeader string `json:"claims_header"`
	// Namespace of the mesh identities.
	Namespace string `json:"namespace"`
}

// Factory builds the plugin from its configuration.
type Factory struct{}

// Validate parses and checks the configuration.
func (Factory) Validate(_ *plugins.Manager, raw []byte) (any, error) {
	config := Config{Query: "data.aiswa.authz.result", ClaimsHeader: "x-jwt-payload", Namespace: "aiswa"}
	if err := json.Unmarshal(raw, &config); err != nil {
		return nil, fmt.Errorf("plugins.%s: %w", PluginName, err)
	}
	if config.Addr == "" || config.Destination == "" {
		return nil, fmt.Errorf("plugins.%s: addr %q and destination %q must both be set, "+
			"e.g. --set plugins.%s.addr=127.0.0.1:9191 --set plugins.%s.destination=projects",
			PluginName, config.Addr, config.Destination, PluginName, PluginName)
	}
	return config, nil
}

// New returns the plugin.
func (Factory) New(manager *plugins.Manager, config any) plugins.Plugin {
	return &Plugin{manager: manager, config: config.(Config)}
}

// Plugin serves envoy.service.auth.v3.Authorization.
type Plugin struct {
	authv3.UnimplementedAuthorizationServer
	manager  *plugins.Manager
	config   Config
	server   *grpc.Server
	mu       sync.RWMutex
	prepared *rego.PreparedEvalQuery
	gateway  string
}

// Start listens and serves the Authorization service in the background.
func (p *Plugin) Start(context.Context) error {
	p.gateway = "gateway." + p.config.Namespace + identityDomain
	p.manager.RegisterCompilerTrigger(p.compilerUpdated)
	network, address := "tcp", p.config.Addr
	if strings.HasPrefix(address, "unix://") {
		network, address = "unix", strings.TrimPrefix(address, "unix://")
	}
	listener, err := net.Listen(network, address)
	if err != nil {
		return err
	}
	p.server = grpc.NewServer()
	authv3.RegisterAuthorizationServer(p.server, p)
	go func() { _ = p.server.Serve(listener) }()
	p.manager.UpdatePluginStatus(PluginName, &plugins.Status{State: plugins.StateOK})
	return nil
}

// Stop ends the gRPC server after the calls in flight.
func (p *Plugin) Stop(context.Context) {
	if p.server != nil {
		p.server.GracefulStop()
	}
	p.manager.UpdatePluginStatus(PluginName, &plugins.Status{State: plugins.StateNotReady})
}

// Reconfigure is a no-op: the benchmark sets the configuration on the command
// line, so it never changes while OPA runs.
func (p *Plugin) Reconfigure(context.Context, any) {}

// compilerUpdated drops the prepared query when a policy file changes.
func (p *Plugin) compilerUpdated(storage.Transaction) {
	p.mu.Lock()
	p.prepared = nil
	p.mu.Unlock()
}

// query returns the prepared decision query, preparing it after a policy change.
func (p *Plugin) query(ctx context.Context, txn storage.Transaction) (*rego.PreparedEvalQuery, error) {
	p.mu.RLock()
	prepared := p.prepared
	p.mu.RUnlock()
	if prepared != nil {
		return prepared, nil
	}
	// Prepared under the write lock, so that a policy change during the
	// preparation cannot be overwritten by a query of the older policy.
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prepared != nil {
		return p.prepared, nil
	}
	query, err := rego.New(
		rego.Query(p.config.Query),
		rego.Compiler(p.manager.GetCompiler()),
		rego.Store(p.manager.Store),
		rego.Transaction(txn),
		rego.Runtime(p.manager.Info),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	p.prepared = &query
	return &query, nil
}

// dnsIdentity turns the peer's URI SAN, which Envoy sends as the source
// principal, spiffe://root.linkerd.cluster.local/ns/<namespace>/sa/<service>,
// into the DNS identity that the sidecar writes into l5d-client-id. It
// returns "" for anything else, which the policy denies as an unknown caller.
func dnsIdentity(principal string) string {
	parts := strings.Split(strings.TrimPrefix(principal, "spiffe://"), "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return ""
	}
	return parts[4] + "." + parts[2] + identityDomain
}

// Check decides one call. A denial, also when no decision could be made,
// is a 403 whose body is the reason. Envoy returns it to a gRPC caller as
// PERMISSION_DENIED with the body as the message.
func (p *Plugin) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	started := time.Now()
	caller := dnsIdentity(req.GetAttributes().GetSource().GetPrincipal())
	http := req.GetAttributes().GetRequest().GetHttp()
	input := map[string]any{"caller": caller, "destination": p.config.Destination, "method": http.GetPath()}
	if caller == p.gateway {
		if header := http.GetHeaders()[p.config.ClaimsHeader]; header != "" {
			claims, err := decodeClaims(header)
			if err != nil {
				reason := fmt.Sprintf("the gateway's %s header is invalid: %v", p.config.ClaimsHeader, err)
				p.manager.Logger().Warn("ext_authz: call to %s denied: %s", http.GetPath(), reason)
				return deny(reason), nil
			}
			input["claims"] = claims
		}
	}
	allow, reason, err := p.decide(ctx, input, started)
	if err != nil {
		p.manager.Logger().Error("ext_authz: no decision for %s calling %s: %v", caller, http.GetPath(), err)
		return deny("authorization service unavailable: " + err.Error()), nil
	}
	if !allow {
		return deny(reason), nil
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}}, nil
}

// decide evaluates the query for input and logs the decision the way OPA's
// Data API does. An error means that no decision was made.
func (p *Plugin) decide(ctx context.Context, input map[string]any, started time.Time) (bool, string, error) {
	txn, err := p.manager.Store.NewTransaction(ctx)
	if err != nil {
		return false, "", err
	}
	defer p.manager.Store.Abort(ctx, txn)

	query, err := p.query(ctx, txn)
	if err != nil {
		return false, "", err
	}
	value, err := ast.InterfaceToValue(input)
	if err != nil {
		return false, "", err
	}

	results, err := query.Eval(ctx, rego.EvalParsedInput(value), rego.EvalTransaction(txn))
	var result any
	allow, reason := false, ""
	if err == nil && len(results) == 1 && len(results[0].Expressions) == 1 {
		result = results[0].Expressions[0].Value
		if document, ok := result.(map[string]any); ok {
			allow, _ = document["allow"].(bool)
			reason, _ = document["reason"].(string)
		}
	}

	if logger := logs.Lookup(p.manager); logger != nil {
		var anyInput any = input
		info := &server.Info{Txn: txn, DecisionID: uuid.NewString(), Path: strings.ReplaceAll(strings.TrimPrefix(p.config.Query, "data."), ".", "/"),
			Timestamp: started, Input: &anyInput, InputAST: value, Results: &result, Error: err}
		_ = logger.Log(ctx, info)
	}

	if err != nil {
		return false, "", err
	}
	if reason == "" {
		return false, "", fmt.Errorf("no {allow, reason} at %s", p.config.Query)
	}
	return allow, reason, nil
}

// decodeClaims reads the gateway's claims header: base64url of a JSON object.
func decodeClaims(header string) (map[string]any, error) {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(header, "="))
	if err != nil {
		return nil, fmt.Errorf("it is not base64url JSON (%v)", err)
	}
	var claims any
	if err := json.Unmarshal(raw, &claims); err != nil {
		return nil, fmt.Errorf("it is not base64url JSON (%v)", err)
	}
	object, ok := claims.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("it is JSON %T, not an object", claims)
	}
	return object, nil
}

// deny returns a denial with reason as the gRPC message.
func deny(reason string) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
			Body:   reason,
		}},
	}
}
