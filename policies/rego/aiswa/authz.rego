# METADATA
# title: Call-level authorization of the AI-SWA mesh
# description: >-
#   Decides whether one gRPC call may reach its destination workload. The service
#   runtime asks for data.aiswa.authz.result before it runs any handler, and denies
#   the call unless allow is true, when OPA does not answer in time, or when the
#   answer is malformed.
#
#   Input: caller (the l5d-client-id DNS identity set by the sidecar), destination
#   (the workload name in mesh/topology.yaml), method (/package.Service/Method) and,
#   only for calls from the gateway, claims (the end user's verified token payload).
#
#   Data: data.aiswa.topology (rendered from mesh/topology.yaml by
#   `aiswa policy render`) and data.aiswa.grants (aiswa/grants/data.yaml).
# custom:
#   protects: >-
#     Every method of every workload in mesh/topology.yaml: workloads call each other
#     only through the grants in data.aiswa.grants.service_methods, and end users reach
#     methods through the gateway only with the role that data.aiswa.grants.user_methods
#     names for the method.
package aiswa.authz

_health_check := "/grpc.health.v1.Health/Check"

# Linkerd writes the DNS SAN of a workload certificate in this form, and the
# sidecars copy it into l5d-client-id.
_identity_suffix := sprintf(".%s.serviceaccount.identity.linkerd.cluster.local", [data.aiswa.topology.namespace])

_caller := object.get(input, "caller", "")

_destination := object.get(input, "destination", "")

_method := object.get(input, "method", "")

# The caller's service account when the caller is an identity of this mesh's namespace.
_caller_account := account if {
	endswith(_caller, _identity_suffix)
	account := trim_suffix(_caller, _identity_suffix)
	regex.match(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, account)
}

_caller_label := sprintf("%s.%s", [_caller_account, data.aiswa.topology.namespace]) if {
	_caller_account
} else := "a caller without identity" if {
	_caller == ""
} else := sprintf("%v", [_caller])

_from_gateway if _caller_account == data.aiswa.topology.gateway_service_account

_workload := data.aiswa.topology.workloads[_destination]

# The service and method names of "/package.Service/Method".
_method_parts := [service, name] if {
	is_string(_method)
	regex.match(`^/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*$`, _method)
	[_, service, name] := split(_method, "/")
}

_method_service := _method_parts[0]

_method_name := _method_parts[1]

_internal if _method_name in _workload.internal_methods

_claims_present if is_object(input.claims)

_user_role := object.get(input.claims, "role", null) if _claims_present

_role_methods := object.get(data.aiswa.grants.user_methods, _destination, {})

_required_role := object.get(_role_methods, _method_name, "admin")

# Every call of the platform waits for this policy, and OPA spends some microseconds
# on each rule it evaluates. So each kind of allowed call below is decided in one
# rule body that reads input and data directly. The helper rules above serve only
# the denial reasons, which OPA evaluates only when no permission holds. This
# nearly halves the policy's time for an allowed call (docs/benchmarks.md).

# The caller's service account and the method name, when the caller is a client of
# the destination in mesh/topology.yaml and the method is one of the destination's
# gRPC service.
_client_call := [account, name] if {
	endswith(input.caller, _identity_suffix)
	account := trim_suffix(input.caller, _identity_suffix)
	account in data.aiswa.topology.workloads[input.destination].clients

	# The pattern of _method_parts, written out again: a rule that holds it for both
	# adds 13 allocations to every decision (opa bench, 311 to 324).
	regex.match(`^/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*$`, input.method)
	[_, service, name] := split(input.method, "/")
	service == data.aiswa.topology.workloads[input.destination].grpc_service
}

# Who the caller is and why the call is allowed, as [caller label, rule]. The first
# rule that holds wins, so the branches need not exclude each other.
_permission := [_caller_label, "health checks are open to every caller"] if {
	input.method == _health_check
} else := [_account_label(account), sprintf("%s is granted %s on %s", [account, name, input.destination])] if {
	[account, name] := _client_call
	account != data.aiswa.topology.gateway_service_account
	name in data.aiswa.grants.service_methods[input.destination][account]
} else := [_account_label(account), sprintf("%s is a public method of %s", [name, input.destination])] if {
	[account, name] := _client_call
	account == data.aiswa.topology.gateway_service_account
	name in data.aiswa.topology.workloads[input.destination].public_methods
} else := [
	_account_label(account),
	sprintf("the end user's role %s may call it (it needs %s)", [role, required]),
] if {
	[account, name] := _client_call
	account == data.aiswa.topology.gateway_service_account
	not name in data.aiswa.topology.workloads[input.destination].internal_methods
	role := input.claims.role
	required := object.get(object.get(data.aiswa.grants.user_methods, input.destination, {}), name, "admin")
	some rank, required_rank
	data.aiswa.grants.roles[rank] == role
	data.aiswa.grants.roles[required_rank] == required
	rank >= required_rank
}

_account_label(account) := concat(".", [account, data.aiswa.topology.namespace])

# Why the call is denied, most basic fault first. Only read when no permission holds.
_denial := sprintf("%v is not a gRPC method name of the form /package.Service/Method", [_method]) if {
	not _method_parts
} else := sprintf("%v is not a workload of the mesh", [_destination]) if {
	not _workload
} else := sprintf("%s serves %s, not %s", [_destination, _workload.grpc_service, _method_service]) if {
	_method_service != _workload.grpc_service
} else := sprintf("the caller is not an identity of namespace %s", [data.aiswa.topology.namespace]) if {
	not _caller_account
} else := sprintf("%s is not a client of %s in mesh/topology.yaml", [_caller_label, _destination]) if {
	not _caller_account in _workload.clients
} else := "internal methods are not reachable through the gateway" if {
	_from_gateway
	_internal
} else := sprintf(
	"calls through the gateway need end-user claims, except to the public methods %s",
	[json.marshal(_workload.public_methods)],
) if {
	_from_gateway
	not _claims_present
} else := sprintf(
	"the end user's role %s is not one of %s",
	[json.marshal(_user_role), json.marshal(data.aiswa.grants.roles)],
) if {
	_from_gateway
	not _user_role in data.aiswa.grants.roles
} else := sprintf("it needs the role %s or higher; the end user has %s", [_required_role, _user_role]) if {
	_from_gateway
} else := sprintf(
	"%s has no grant for %s on %s in data.aiswa.grants.service_methods",
	[_caller_account, _method_name, _destination],
)

# METADATA
# title: Decision on one call
# description: >-
#   {"allow": bool, "reason": string}. The reason names the caller, the method and the
#   destination, and says which rule allowed the call or why it was denied. Anything
#   no rule allows is denied.
# scope: document
# entrypoint: true
# custom:
#   protects: every gRPC method of every workload of the mesh
default result := {"allow": false, "reason": "the input is not an object with caller, destination and method"}

result := {"allow": true, "reason": reason} if {
	[who, why] := _permission
	reason := sprintf("%s may call %s on %s: %s", [who, _method, _destination, why])
} else := {"allow": false, "reason": reason} if {
	reason := sprintf("%s may not call %v on %v: %s", [_caller_label, _method, _destination, _denial])
}
