# METADATA
# title: Decisions
# description: >-
#   The three decisions the connector asks for. Each is an object
#   {"allow": bool, "reasons": [...], "obligations": [...]} that is defined for every input
#   (fail closed): a malformed request is denied with a reason that says what is wrong.
#     data.connector.decision.access   may this requester use this dataset for this purpose?
#     data.connector.decision.release  may this job result leave the connector?
#     data.connector.decision.api      may a caller with these roles call this API route?
#   This package also resolves a dataset's terms (defaults in data.json merged with the
#   dataset's own settings) and whether the dataset exists here (data.connector.state).
package connector.decision

import data.connector.api as api_policy
import data.connector.cohort
import data.connector.consent
import data.connector.egress
import data.connector.jurisdiction
import data.connector.permits
import data.connector.purposes

# ---------------------------------------------------------------------------------------------
# The request. Rules read its fields through `request`, which is {} when the input is not a JSON
# object, so that a missing or mistyped field is a reason to deny and never an evaluation error.
# ---------------------------------------------------------------------------------------------

input_is_object if is_object(input)

default request := {}

request := input if input_is_object

action := object.get(request, "action", null)

dataset := object.get(request, "dataset", null)

# ---------------------------------------------------------------------------------------------
# Settings (policies/data.json, edited by the DPO) and state (pushed by the connector at run
# time). Either may be absent: absent settings give no terms, absent state knows no dataset.
# ---------------------------------------------------------------------------------------------

default settings := {}

settings := s if {
	s := data.connector.settings
	is_object(s)
}

default state := {}

state := s if {
	s := data.connector.state
	is_object(s)
}

# The terms that apply to dataset `name`: settings.defaults with settings.datasets[name] merged
# over it (top-level keys replace the default, except "egress" which is merged key by key).
# Undefined when the settings for the dataset are not JSON objects.
dataset_terms(name) := terms if {
	is_string(name)
	defaults := object.get(settings, "defaults", {})
	datasets := object.get(settings, "datasets", {})
	is_object(defaults)
	is_object(datasets)
	own := object.get(datasets, name, {})
	is_object(own)
	is_object(object.get(defaults, "egress", {}))
	is_object(object.get(own, "egress", {}))

	# object.union replaces top-level values and merges the "egress" objects key by key
	terms := object.union(defaults, own)
}

# The terms of the requested dataset (evaluated once per decision).
terms := dataset_terms(input.dataset)

# The dataset exists here when the connector's state lists it (a key lookup, no iteration).
dataset_exists(name) if {
	is_string(name)
	is_object(object.get(state, ["datasets", name], null))
}

# ---------------------------------------------------------------------------------------------
# Checks shared by access and release: the request must name a dataset that exists here and
# whose settings can be read.
# ---------------------------------------------------------------------------------------------

dataset_failures contains "input.dataset is missing or not a string" if {
	not is_string(dataset)
}

dataset_failures contains msg if {
	is_string(dataset)
	not dataset_exists(dataset)
	msg := sprintf("dataset %q does not exist here", [dataset])
}

dataset_failures contains msg if {
	dataset_exists(dataset)
	not terms
	msg := sprintf(
		"the settings for dataset %q are malformed (defaults, datasets.%s and their egress in data.json must be JSON objects)",
		[dataset, dataset],
	)
}

dataset_errors := set() if dataset_ok else := dataset_failures

default dataset_ok := false

dataset_ok if {
	is_string(input.dataset)
	is_object(data.connector.state.datasets[input.dataset])
	terms
}

# The request envelope: a JSON object whose "action" names this decision. When the envelope is
# wrong, its reason is the only one given (the other checks would only repeat it).
envelope_errors(expected) := [sprintf("input must be a JSON object (a request for the %q decision)", [expected])] if {
	not input_is_object
} else := [sprintf("input.action is missing or not a string (expected %q)", [expected])] if {
	not is_string(action)
} else := [sprintf("this decision is for action %q, got %q", [expected, action])] if {
	action != expected
} else := []

# Every check must have passed positively: a check that neither passed nor gave a reason (for
# example because the settings in data.json are malformed) still denies.
incomplete(checks) := {msg |
	some name, passed in checks
	passed != true
	msg := sprintf("the %s check could not be completed (check the settings in data.json)", [name])
}

# A denial: the envelope errors alone when the request is malformed, otherwise the deny reasons,
# otherwise the checks that did not complete. `obligations` are those given with a denial (for a
# release: what would make the result releasable).
denied(envelope, denials, unfinished, obligations) := {"allow": false, "reasons": sort(envelope), "obligations": []} if {
	count(envelope) > 0
} else := {"allow": false, "reasons": sort(denials), "obligations": sort(obligations)} if {
	count(denials) > 0
} else := {"allow": false, "reasons": sort(unfinished), "obligations": sort(obligations)} if {
	count(unfinished) > 0
} else := {"allow": false, "reasons": ["denied: no check gave a reason (this is a fault in the policy)"], "obligations": []}

# ---------------------------------------------------------------------------------------------
# access: {"action": "access", "dataset", "purpose", "requester": {"id", "organisation",
# "country"}, "permit_check": {...}, "cohort": {"size", "excluded"}}
# ---------------------------------------------------------------------------------------------

access_denials := ((((dataset_errors | purposes.deny) | permits.deny) | consent.deny) | jurisdiction.deny) | cohort.deny

access_checks := {
	"dataset": dataset_ok,
	"purpose": purposes.ok,
	"data permit": permits.ok,
	"legal basis": consent.ok,
	"jurisdiction": jurisdiction.ok,
	"cohort size": cohort.ok,
}

access_reasons := (((purposes.reasons | permits.reasons) | consent.reasons) | jurisdiction.reasons) | cohort.reasons

access_obligations := ((permits.obligations | consent.obligations) | cohort.obligations) | egress.access_obligations

# Allowed only when every check passed; the deny reasons are worked out only for a denial.
access := {"allow": true, "reasons": sort(access_reasons), "obligations": sort(access_obligations)} if {
	input.action == "access"
	dataset_ok
	purposes.ok
	permits.ok
	consent.ok
	jurisdiction.ok
	cohort.ok
} else := denied(envelope_errors("access"), access_denials, incomplete(access_checks), set())

# ---------------------------------------------------------------------------------------------
# release: {"action": "release", "dataset", "result": {"kind", "cohort_size", "min_cell",
# "contains_pixels", "contains_pseudonyms", "bytes"}}
# ---------------------------------------------------------------------------------------------

release_checks := {"dataset": dataset_ok, "egress": egress.ok}

release := {"allow": true, "reasons": sort(egress.reasons), "obligations": sort(egress.obligations)} if {
	input.action == "release"
	dataset_ok
	egress.ok
} else := denied(envelope_errors("release"), dataset_errors | egress.deny, incomplete(release_checks), egress.obligations)

# ---------------------------------------------------------------------------------------------
# api: {"action": "api", "method", "route", "roles": [...]}
# ---------------------------------------------------------------------------------------------

api := {"allow": true, "reasons": sort(api_policy.reasons), "obligations": []} if {
	input.action == "api"
	api_policy.ok
} else := denied(envelope_errors("api"), api_policy.deny, incomplete({"API role": api_policy.ok}), set())
