# METADATA
# title: API roles
# description: >-
#   Which roles may call which route of the connector's REST API. The table is
#   settings.api_routes in data.json: "METHOD /route" -> [roles], where the route is the route
#   template as the API declares it (e.g. /v1/datasets/{name}). A route that is not in the table
#   is denied to everyone.
package connector.api

import data.connector.decision

# ---------------------------------------------------------------------------------------------
# The check: one of the caller's roles is allowed on the route
# ---------------------------------------------------------------------------------------------

default ok := false

ok if {
	roles_valid
	count(granted) > 0
}

routes := object.get(decision.settings, "api_routes", {})

method := object.get(decision.request, "method", null)

route := object.get(decision.request, "route", null)

roles_given := object.get(decision.request, "roles", null)

key := sprintf("%s %s", [upper(method), route]) if {
	is_string(method)
	is_string(route)
}

# The roles allowed on this route (one key lookup; undefined when the route is not listed).
allowed := routes[key]

allowed_roles := {r | some r in allowed; is_string(r)}

roles := {r | some r in roles_given; is_string(r)}

granted := roles & allowed_roles

roles_valid if {
	is_array(roles_given)
	every r in roles_given {
		is_string(r)
	}
}

reasons contains msg if {
	ok
	some role in granted
	msg := sprintf("role %s may call %s", [role, key])
}

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

failures contains "input.method is missing or not a string" if not is_string(method)

failures contains "input.route is missing or not a string" if not is_string(route)

failures contains "input.roles is missing or not a list of role names" if not roles_valid

failures contains "the API role policy (settings.api_routes in data.json) is missing or not an object" if {
	not is_object(routes)
}

failures contains msg if {
	key
	is_object(routes)
	not allowed
	msg := sprintf("route %s is not in the API role policy", [key])
}

failures contains msg if {
	roles_valid
	allowed
	count(granted) == 0
	msg := sprintf("roles %s may not call %s (allowed: %s)", [shown(roles), key, shown(allowed_roles)])
}

shown(names) := concat(", ", sort(names)) if count(names) > 0 else := "none"
