package connector.api_test

import data.connector.api

routes := {"GET /v1/audit": ["dpo"], "POST /v1/access/decide": ["researcher", "dpo"], "GET /v1/broken": "dpo"}

call(method, route, roles) := {"action": "api", "method": method, "route": route, "roles": roles}

deny_for(inp) := result if {
	result := api.deny with input as inp with data.connector.settings as {"api_routes": routes}
}

ok_for(inp) if {
	api.ok with input as inp with data.connector.settings as {"api_routes": routes}
}

reasons_for(inp) := result if {
	result := api.reasons with input as inp with data.connector.settings as {"api_routes": routes}
}

test_role_allowed_on_route if {
	inp := call("GET", "/v1/audit", ["dpo"])
	deny_for(inp) == set()
	ok_for(inp)
	reasons_for(inp) == {"role dpo may call GET /v1/audit"}
}

test_one_of_several_roles_is_enough if {
	inp := call("POST", "/v1/access/decide", ["peer", "researcher"])
	ok_for(inp)
	reasons_for(inp) == {"role researcher may call POST /v1/access/decide"}
}

test_method_is_case_insensitive if {
	ok_for(call("get", "/v1/audit", ["dpo"]))
}

test_role_not_allowed_on_route if {
	inp := call("GET", "/v1/audit", ["researcher", "steward"])
	deny_for(inp) == {"roles researcher, steward may not call GET /v1/audit (allowed: dpo)"}
	not ok_for(inp)
	reasons_for(inp) == set()
}

test_caller_without_roles if {
	deny_for(call("GET", "/v1/audit", [])) == {"roles none may not call GET /v1/audit (allowed: dpo)"}
	not ok_for(call("GET", "/v1/audit", []))
}

test_route_not_in_the_table if {
	deny_for(call("GET", "/v1/secret", ["dpo"])) == {"route GET /v1/secret is not in the API role policy"}
	deny_for(call("DELETE", "/v1/audit", ["dpo"])) == {"route DELETE /v1/audit is not in the API role policy"}
	not ok_for(call("GET", "/v1/secret", ["dpo"]))
}

test_malformed_role_list_in_the_table_allows_nobody if {
	deny_for(call("GET", "/v1/broken", ["dpo"])) == {"roles dpo may not call GET /v1/broken (allowed: none)"}
	not ok_for(call("GET", "/v1/broken", ["dpo"]))
}

test_missing_fields if {
	deny_for({"action": "api"}) == {
		"input.method is missing or not a string",
		"input.route is missing or not a string",
		"input.roles is missing or not a list of role names",
	}
	deny_for(call("GET", "/v1/audit", "dpo")) == {"input.roles is missing or not a list of role names"}
	deny_for(call("GET", "/v1/audit", ["dpo", 1])) == {"input.roles is missing or not a list of role names"}
	not ok_for(call("GET", "/v1/audit", ["dpo", 1]))
	not ok_for(call("GET", "/v1/audit", "dpo"))
}

test_missing_route_table if {
	d := api.deny with input as call("GET", "/v1/audit", ["dpo"]) with data.connector.settings as {}
	d == {"route GET /v1/audit is not in the API role policy"}
	d2 := api.deny with input as call("GET", "/v1/audit", ["dpo"]) with data.connector.settings as {"api_routes": ["GET /v1/audit"]}
	d2 == {"the API role policy (settings.api_routes in data.json) is missing or not an object"}
	not api.ok with input as call("GET", "/v1/audit", ["dpo"]) with data.connector.settings as {"api_routes": ["GET /v1/audit"]}
}

test_non_object_input if {
	deny_for("GET /v1/audit") == {
		"input.method is missing or not a string",
		"input.route is missing or not a string",
		"input.roles is missing or not a list of role names",
	}
	not ok_for("GET /v1/audit")
}

test_shipped_table_keeps_the_audit_trail_to_the_dpo if {
	not api.ok with input as call("GET", "/v1/audit", ["researcher", "steward", "hdab", "peer"])
	api.ok with input as call("GET", "/v1/audit", ["dpo"])
	not api.ok with input as call("POST", "/v1/policy/activate", ["steward"])
}
