// Command opa-ext-authz is OPA with one more plugin, aiswa_ext_authz: an
// Envoy external authorization (ext_authz) gRPC server that decides each call
// with the policy at data.aiswa.authz.result, the same input and the same
// decision log as the services' interceptor.
//
// It exists for benchmarks/bench_mesh.py only. That benchmark compares a
// decision made in the sidecar (Envoy calls this server) with the platform's
// (the service runtime sends OPA an HTTP request). Nothing in `make up` runs it. It plays the part
// of OPA's Envoy plugin (opa-envoy-plugin), which the Go module proxy that
// this project's machines reach does not serve.
//
//	opa-ext-authz run --server --addr 127.0.0.1:8181 \
//	    --set plugins.aiswa_ext_authz.addr=127.0.0.1:9191 \
//	    --set plugins.aiswa_ext_authz.destination=projects policies/rego
package main

import (
	"errors"
	"os"

	"github.com/open-policy-agent/opa/cmd"
	"github.com/open-policy-agent/opa/v1/runtime"
)

func main() {
	runtime.RegisterPlugin(PluginName, Factory{})
	if err := cmd.RootCommand.Execute(); err != nil {
		if exitErr, ok := errors.AsType[*cmd.ExitError](err); ok {
			os.Exit(exitErr.Exit)
		}
		os.Exit(1)
	}
}
