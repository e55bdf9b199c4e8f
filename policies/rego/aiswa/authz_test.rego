# METADATA
# title: Tests of aiswa.authz
# description: >-
#   Each test evaluates the decision with the real data.aiswa.topology and
#   data.aiswa.grants loaded by `opa test policies/rego`, so a change to the grants
#   or the topology that breaks a rule fails here. The expected matrix of every
#   identity and method is checked by tests/unit/test_policy_matrix.py.
package aiswa.authz_test

import data.aiswa.authz

_users := "/aiswa.users.v1.UsersService"

_projects := "/aiswa.projects.v1.ProjectsService"

_identity(account) := sprintf("%s.aiswa.serviceaccount.identity.linkerd.cluster.local", [account])

_call(account, destination, method) := {
	"caller": _identity(account),
	"destination": destination,
	"method": method,
}

_user_call(role, destination, method) := object.union(
	_call("gateway", destination, method),
	{"claims": {"sub": "0f6b7a2e-0000-4000-8000-000000000001", "role": role}},
)

# --- allowed calls ---

test_health_check_open_to_everyone if {
	every caller in [_identity("gateway"), _identity("users"), "intruder.example.org", ""] {
		decision := authz.result with input as {
			"caller": caller,
			"destination": "projects",
			"method": "/grpc.health.v1.Health/Check",
		}
		decision.allow == true
		endswith(decision.reason, "health checks are open to every caller")
	}
}

test_health_check_without_caller_names_no_identity if {
	decision := authz.result with input as {"destination": "users", "method": "/grpc.health.v1.Health/Check"}
	decision.allow == true
	startswith(decision.reason, "a caller without identity may call")
}

test_health_check_without_destination_allowed if {
	decision := authz.result with input as {"caller": _identity("users"), "method": "/grpc.health.v1.Health/Check"}
	decision == {
		"allow": true,
		"reason": "users.aiswa may call /grpc.health.v1.Health/Check on : health checks are open to every caller",
	}
}

test_public_method_needs_no_claims if {
	decision := authz.result with input as _call("gateway", "users", concat("", [_users, "/CreateToken"]))
	decision == {
		"allow": true,
		"reason": concat("", [
			"gateway.aiswa may call /aiswa.users.v1.UsersService/CreateToken on users: ",
			"CreateToken is a public method of users",
		]),
	}
}

test_public_method_allowed_with_claims if {
	decision := authz.result with input as _user_call("viewer", "users", concat("", [_users, "/GetJwks"]))
	decision.allow == true
}

test_viewer_reads_project if {
	decision := authz.result with input as _user_call("viewer", "projects", concat("", [_projects, "/GetProject"]))
	decision.allow == true
	endswith(decision.reason, "the end user's role viewer may call it (it needs viewer)")
}

test_maintainer_starts_run if {
	decision := authz.result with input as _user_call("maintainer", "projects", concat("", [_projects, "/StartRun"]))
	decision.allow == true
}

test_admin_calls_unlisted_method if {
	# ListUsers is not in user_methods, so it falls back to admin.
	decision := authz.result with input as _user_call("admin", "users", concat("", [_users, "/ListUsers"]))
	decision.allow == true
	endswith(decision.reason, "(it needs admin)")
}

test_reflector_reads_archive if {
	decision := authz.result with input as _call("reflector", "projects", concat("", [_projects, "/ReadArchive"]))
	decision == {
		"allow": true,
		"reason": concat("", [
			"reflector.aiswa may call /aiswa.projects.v1.ProjectsService/ReadArchive on projects: ",
			"reflector is granted ReadArchive on projects",
		]),
	}
}

# --- denied calls, in the order the policy checks them ---

test_method_without_service_denied if {
	decision := authz.result with input as _call("reflector", "projects", "GetProject")
	decision == {
		"allow": false,
		"reason": concat("", [
			"reflector.aiswa may not call GetProject on projects: ",
			"GetProject is not a gRPC method name of the form /package.Service/Method",
		]),
	}
}

test_method_not_string_denied if {
	decision := authz.result with input as _call("reflector", "projects", 42)
	decision.allow == false
	contains(decision.reason, "42 is not a gRPC method name")
}

test_unknown_destination_denied if {
	decision := authz.result with input as _call("gateway", "billing", concat("", [_projects, "/GetProject"]))
	decision.allow == false
	endswith(decision.reason, ": billing is not a workload of the mesh")
}

test_method_of_other_service_denied if {
	decision := authz.result with input as _user_call("admin", "users", concat("", [_projects, "/GetProject"]))
	decision.allow == false
	endswith(decision.reason, ": users serves aiswa.users.v1.UsersService, not aiswa.projects.v1.ProjectsService")
}

test_foreign_namespace_denied if {
	decision := authz.result with input as {
		"caller": "reflector.other.serviceaccount.identity.linkerd.cluster.local",
		"destination": "projects",
		"method": concat("", [_projects, "/ReadArchive"]),
	}
	decision == {
		"allow": false,
		"reason": concat("", [
			"reflector.other.serviceaccount.identity.linkerd.cluster.local may not call ",
			"/aiswa.projects.v1.ProjectsService/ReadArchive on projects: ",
			"the caller is not an identity of namespace aiswa",
		]),
	}
}

test_missing_caller_denied if {
	decision := authz.result with input as {"destination": "projects", "method": concat("", [_projects, "/GetProject"])}
	decision.allow == false
	startswith(decision.reason, "a caller without identity may not call")
}

test_malformed_account_denied if {
	decision := authz.result with input as _call("Vision_2", "projects", concat("", [_projects, "/GetProject"]))
	decision.allow == false
	endswith(decision.reason, "the caller is not an identity of namespace aiswa")
}

test_non_client_denied if {
	decision := authz.result with input as _call("users", "projects", concat("", [_projects, "/GetProject"]))
	decision == {
		"allow": false,
		"reason": concat("", [
			"users.aiswa may not call /aiswa.projects.v1.ProjectsService/GetProject on projects: ",
			"users.aiswa is not a client of projects in mesh/topology.yaml",
		]),
	}
}

test_unknown_account_of_namespace_denied if {
	decision := authz.result with input as _call("intruder", "projects", concat("", [_projects, "/GetProject"]))
	decision.allow == false
	endswith(decision.reason, "intruder.aiswa is not a client of projects in mesh/topology.yaml")
}

test_internal_method_denied_to_admin if {
	decision := authz.result with input as _user_call("admin", "projects", concat("", [_projects, "/ReadArchive"]))
	decision.allow == false
	endswith(decision.reason, ": internal methods are not reachable through the gateway")
}

test_gateway_without_claims_denied if {
	decision := authz.result with input as _call("gateway", "users", concat("", [_users, "/GetCurrentUser"]))
	decision.allow == false
	endswith(
		decision.reason,
		`: calls through the gateway need end-user claims, except to the public methods ["CreateToken","GetJwks"]`,
	)
}

test_claims_not_object_denied if {
	document := object.union(_call("gateway", "users", concat("", [_users, "/GetCurrentUser"])), {"claims": "admin"})
	decision := authz.result with input as document
	decision.allow == false
	contains(decision.reason, "need end-user claims")
}

test_unknown_role_denied if {
	decision := authz.result with input as _user_call("owner", "projects", concat("", [_projects, "/GetProject"]))
	decision.allow == false
	endswith(decision.reason, `: the end user's role "owner" is not one of ["viewer","maintainer","admin"]`)
}

test_claims_without_role_denied if {
	document := object.union(
		_call("gateway", "projects", concat("", [_projects, "/GetProject"])),
		{"claims": {"sub": "0f6b7a2e-0000-4000-8000-000000000001"}},
	)
	decision := authz.result with input as document
	decision.allow == false
	endswith(decision.reason, `: the end user's role null is not one of ["viewer","maintainer","admin"]`)
}

test_viewer_cannot_start_run if {
	decision := authz.result with input as _user_call("viewer", "projects", concat("", [_projects, "/StartRun"]))
	decision == {
		"allow": false,
		"reason": concat("", [
			"gateway.aiswa may not call /aiswa.projects.v1.ProjectsService/StartRun on projects: ",
			"it needs the role maintainer or higher; the end user has viewer",
		]),
	}
}

test_maintainer_cannot_create_user if {
	decision := authz.result with input as _user_call("maintainer", "users", concat("", [_users, "/CreateUser"]))
	decision.allow == false
	endswith(decision.reason, "it needs the role admin or higher; the end user has maintainer")
}

test_workload_without_grant_denied if {
	decision := authz.result with input as _call("vision", "projects", concat("", [_projects, "/ReadArchive"]))
	decision == {
		"allow": false,
		"reason": concat("", [
			"vision.aiswa may not call /aiswa.projects.v1.ProjectsService/ReadArchive on projects: ",
			"vision has no grant for ReadArchive on projects in data.aiswa.grants.service_methods",
		]),
	}
}

test_workload_claims_ignored if {
	# Only the gateway speaks for end users, so admin claims do not widen a workload's grants.
	document := object.union(
		_call("vision", "projects", concat("", [_projects, "/ReadArchive"])),
		{"claims": {"sub": "0f6b7a2e-0000-4000-8000-000000000001", "role": "admin"}},
	)
	decision := authz.result with input as document
	decision.allow == false
}

test_health_watch_denied if {
	decision := authz.result with input as _call("gateway", "users", "/grpc.health.v1.Health/Watch")
	decision.allow == false
	endswith(decision.reason, ": users serves aiswa.users.v1.UsersService, not grpc.health.v1.Health")
}

test_input_not_object_denied if {
	decision := authz.result with input as "reflector"
	decision == {"allow": false, "reason": "the input is not an object with caller, destination and method"}
}

# --- the grants agree with the topology ---

test_service_grants_follow_topology if {
	every destination, callers in data.aiswa.grants.service_methods {
		every caller, _ in callers {
			caller in data.aiswa.topology.workloads[destination].clients
			destination in data.aiswa.topology.workloads[caller].upstreams
		}
	}
}

test_user_method_roles_known if {
	every _, methods in data.aiswa.grants.user_methods {
		every _, role in methods {
			role in data.aiswa.grants.roles
		}
	}
}

test_user_methods_neither_public_nor_internal if {
	every destination, methods in data.aiswa.grants.user_methods {
		every method, _ in methods {
			not method in data.aiswa.topology.workloads[destination].public_methods
			not method in data.aiswa.topology.workloads[destination].internal_methods
		}
	}
}
