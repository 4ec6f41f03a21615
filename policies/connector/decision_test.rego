package connector.decision_test

import data.connector.decision

settings := {
	"defaults": {
		"legal_basis": "public-interest",
		"purposes": ["scientific-research", "ai-development"],
		"countries": ["DE", "FR", "NL"],
		"k": 10,
		"egress": {
			"allow_pixels": false, "allow_pseudonyms": false, "max_result_bytes": 1000,
			"per_study_decimals": 2, "max_labels": 16, "max_released_numbers": 100,
		},
	},
	"datasets": {
		"ds": {"k": 5, "egress": {"allow_pixels": true}},
		"consented": {"legal_basis": "consent"},
		"broken": "k=5",
	},
	"api_routes": {"GET /v1/audit": ["dpo"]},
}

state := {
	"datasets": {
		"ds": {"studies": 120, "patients": 42},
		"consented": {"studies": 30, "patients": 25},
		"broken": {"studies": 1, "patients": 1},
	},
	"revoked_permits": {"P-REVOKED": {"reason": "complaint upheld", "revoked_at": "2026-01-15T10:00:00Z"}},
}

claims := {
	"permit_id": "P-1",
	"issuer": "https://hdab.example.eu",
	"requester": "r-1",
	"organisation": "Example Lab",
	"purposes": ["ai-development"],
	"datasets": ["ds", "consented"],
	"countries": [],
	"not_before": 1767225600,
	"expires": 4102444800,
	"conditions": ["publish the model card"],
}

access_request := {
	"action": "access",
	"dataset": "ds",
	"purpose": "ai-development",
	"requester": {"id": "r-1", "organisation": "Example Lab", "country": "DE"},
	"permit_check": {"status": "valid", "detail": "signature verified", "claims": claims},
	"cohort": {"size": 42, "excluded": 3},
}

release_request := {
	"action": "release",
	"dataset": "ds",
	"result": {
		"kind": "aggregate", "cohort_size": 42, "min_cell": 6, "contains_pixels": false, "contains_pseudonyms": false,
		"bytes": 100, "labels": 2, "decimals": null, "studies": 42, "numbers": 5,
	},
	"budget": {"used": 0},
}

api_request := {"action": "api", "method": "GET", "route": "/v1/audit", "roles": ["dpo"]}

patched(doc, path, value) := json.patch(doc, [{"op": "add", "path": path, "value": value}])

access_for(inp) := result if {
	result := decision.access with input as inp
		with data.connector.settings as settings
		with data.connector.state as state
}

release_for(inp) := result if {
	result := decision.release with input as inp
		with data.connector.settings as settings
		with data.connector.state as state
}

api_for(inp) := result if {
	result := decision.api with input as inp
		with data.connector.settings as settings
		with data.connector.state as state
}

# --- access ----------------------------------------------------------------------------------

test_access_allowed if {
	access_for(access_request) == {
		"allow": true,
		"reasons": [
			"cohort of 42 patients meets the minimum of 5",
			`dataset "ds" is used on the legal basis "public-interest": patients who opted out or withdrew consent are excluded`,
			"permit P-1 from https://hdab.example.eu covers this dataset, purpose and requester",
			`purpose "ai-development" is permitted for secondary use (EHDS art. 53(1)(e)(ii)) and dataset "ds" allows it`,
			"requester country DE is allowed for dataset ds",
		],
		"obligations": [
			"exclude 3 patients (opt-out or withdrawn consent)",
			"exclude patients who opt out (EHDS art. 71) or withdraw consent, also while the job runs",
			"permit condition: publish the model card",
			"release no pseudonyms",
			"suppress result cells below 5",
		],
	}
}

test_access_to_a_consent_dataset_carries_the_consent_obligation if {
	d := access_for(patched(access_request, "/dataset", "consented"))
	d.allow == true
	"include only patients who consented, and drop those who withdraw consent while the job runs" in d.obligations
	"exclude 3 patients (no recorded consent, opt-out or withdrawn consent)" in d.obligations
	"release aggregate results only" in d.obligations
}

test_access_denied_gives_every_reason_sorted_and_no_obligations if {
	inp := json.patch(access_request, [
		{"op": "replace", "path": "/purpose", "value": "advertising"},
		{"op": "replace", "path": "/requester/country", "value": "US"},
		{"op": "replace", "path": "/cohort/size", "value": 3},
	])
	access_for(inp) == {
		"allow": false,
		"reasons": [
			"cohort of 3 patients is below the minimum of 5",
			`purpose "advertising" is prohibited for secondary use (EHDS art. 54(c): advertising or marketing activities)`,
			"requester country US is outside the countries allowed for dataset ds (DE, FR, NL)",
			`the data permit does not cover purpose "advertising" (it covers "ai-development")`,
		],
		"obligations": [],
	}
}

test_access_denied_for_a_missing_permit if {
	d := access_for(patched(access_request, "/permit_check", {"status": "missing", "detail": ""}))
	d == {"allow": false, "reasons": ["no data permit was presented"], "obligations": []}
}

test_access_denied_for_a_revoked_permit if {
	d := access_for(patched(access_request, "/permit_check/claims/permit_id", "P-REVOKED"))
	d.allow == false
	d.reasons == ["the data permit P-REVOKED has been revoked: complaint upheld (revoked at 2026-01-15T10:00:00Z)"]
}

test_access_denied_for_an_unknown_dataset if {
	d := access_for(patched(access_request, "/dataset", "nope"))
	d.allow == false
	`dataset "nope" does not exist here` in d.reasons
}

test_access_denied_when_the_connector_pushed_no_state if {
	d := decision.access with input as access_request
		with data.connector.settings as settings
		with data.connector.state as "none"
	d.allow == false
	d.reasons == [`dataset "ds" does not exist here`]
}

test_access_denied_when_the_dataset_settings_are_malformed if {
	d := access_for(patched(access_request, "/dataset", "broken"))
	d.allow == false
	`the settings for dataset "broken" are malformed (defaults, datasets.broken and their egress in data.json must be JSON objects)` in d.reasons
}

test_access_denied_for_a_missing_dataset if {
	d := access_for(json.patch(access_request, [{"op": "remove", "path": "/dataset"}]))
	d.allow == false
	"input.dataset is missing or not a string" in d.reasons
}

# --- fail closed -----------------------------------------------------------------------------

test_empty_input_is_denied if {
	every name in ["access", "release", "api"] {
		d := decision[name] with input as {} with data.connector.settings as settings with data.connector.state as state
		d == {"allow": false, "reasons": [sprintf("input.action is missing or not a string (expected %q)", [name])], "obligations": []}
	}
}

test_non_object_input_is_denied if {
	every value in ["access", 42, ["access"], null, true] {
		every name in ["access", "release", "api"] {
			d := decision[name] with input as value with data.connector.settings as settings with data.connector.state as state
			d == {"allow": false, "reasons": [sprintf("input must be a JSON object (a request for the %q decision)", [name])], "obligations": []}
		}
	}
}

test_no_input_at_all_is_denied if {
	decision.access.allow == false
	decision.access.reasons == [`input must be a JSON object (a request for the "access" decision)`]
	decision.release.allow == false
	decision.api.allow == false
}

test_wrong_action_is_denied if {
	access_for(release_request) == {"allow": false, "reasons": [`this decision is for action "access", got "release"`], "obligations": []}
	release_for(access_request).reasons == [`this decision is for action "release", got "access"`]
	api_for(access_request).reasons == [`this decision is for action "api", got "access"`]
	access_for(patched(access_request, "/action", 1)).reasons == [`input.action is missing or not a string (expected "access")`]
}

test_a_check_that_cannot_complete_denies if {
	decision.incomplete({"purpose": true, "cohort size": false, "egress": null}) == {
		"the cohort size check could not be completed (check the settings in data.json)",
		"the egress check could not be completed (check the settings in data.json)",
	}
	d := decision.denied([], set(), decision.incomplete({"purpose": true, "cohort size": false}), {"an obligation"})
	d == {"allow": false, "reasons": ["the cohort size check could not be completed (check the settings in data.json)"], "obligations": ["an obligation"]}
}

test_a_denial_always_gives_a_reason if {
	decision.denied(["bad input"], {"x"}, {"y"}, {"o"}) == {"allow": false, "reasons": ["bad input"], "obligations": []}
	decision.denied([], {"x"}, {"y"}, {"o"}) == {"allow": false, "reasons": ["x"], "obligations": ["o"]}
	decision.denied([], set(), set(), {"o"}) == {"allow": false, "reasons": ["denied: no check gave a reason (this is a fault in the policy)"], "obligations": []}
}

test_access_denied_without_any_settings if {
	d := decision.access with input as access_request
		with data.connector.settings as "missing"
		with data.connector.state as state
	d == {
		"allow": false,
		"reasons": [
			`dataset "ds" has an unknown legal basis (none) (expected one of: consent, public-interest, scientific-research)`,
			`dataset "ds" has no list of allowed countries in the settings`,
			`dataset "ds" has no valid minimum cohort size k in the settings (a whole number of at least 1, got null)`,
			`purpose "ai-development" is not among the purposes dataset "ds" allows`,
		],
		"obligations": [],
	}
}

# --- release ---------------------------------------------------------------------------------

test_release_allowed if {
	release_for(release_request) == {
		"allow": true,
		"reasons": [
			`aggregate result of a cohort of 42 patients may leave dataset "ds"`,
			"every result cell counts at least 5 patients (smallest: 6)",
			"the result is 100 bytes, within the maximum of 1000",
			`the result releases 5 numbers; the team's budget for dataset "ds": 0 of 100 used before it`,
		],
		"obligations": [],
	}
}

test_release_denied_for_a_small_cell_with_its_obligation if {
	release_for(patched(release_request, "/result/min_cell", 2)) == {
		"allow": false,
		"reasons": ["a result cell of 2 is below the minimum of 5"],
		"obligations": ["suppress cells below 5"],
	}
}

test_release_denied_for_an_unknown_dataset if {
	d := release_for(patched(release_request, "/dataset", "nope"))
	d.allow == false
	`dataset "nope" does not exist here` in d.reasons
}

test_release_uses_the_dataset_egress_terms if {
	release_for(patched(release_request, "/result/contains_pixels", true)).allow == true
	release_for(patched(release_request, "/result/contains_pseudonyms", true)).reasons == [`the result contains pseudonyms, which dataset "ds" does not allow to leave`]
}

# --- api -------------------------------------------------------------------------------------

test_api_allowed if {
	api_for(api_request) == {"allow": true, "reasons": ["role dpo may call GET /v1/audit"], "obligations": []}
}

test_api_denied if {
	api_for(patched(api_request, "/roles", ["researcher"])) == {
		"allow": false,
		"reasons": ["roles researcher may not call GET /v1/audit (allowed: dpo)"],
		"obligations": [],
	}
	api_for(patched(api_request, "/route", "/x")).reasons == ["route GET /x is not in the API role policy"]
}

# --- dataset terms ---------------------------------------------------------------------------

test_dataset_terms_merge_over_the_defaults if {
	t := decision.dataset_terms("ds") with data.connector.settings as settings
	t.k == 5
	t.legal_basis == "public-interest"
	t.egress == object.union(settings.defaults.egress, {"allow_pixels": true})
	u := decision.dataset_terms("unlisted") with data.connector.settings as settings
	u.k == 10
	u.egress == settings.defaults.egress
}

test_dataset_terms_undefined_for_malformed_settings if {
	not decision.dataset_terms("broken") with data.connector.settings as settings
	not decision.dataset_terms("ds") with data.connector.settings as {"defaults": []}
	not decision.dataset_terms("ds") with data.connector.settings as {"datasets": "ds"}
	not decision.dataset_terms("ds") with data.connector.settings as {"datasets": {"ds": {"egress": "none"}}}
	not decision.dataset_terms(7) with data.connector.settings as settings
}

test_dataset_terms_without_settings if {
	decision.dataset_terms("ds") == {} with data.connector.settings as "missing"
}

test_dataset_exists_by_state if {
	decision.dataset_exists("ds") with data.connector.state as state
	not decision.dataset_exists("nope") with data.connector.state as state
	not decision.dataset_exists("ds") with data.connector.state as {"datasets": {"ds": 1}}
	not decision.dataset_exists(7) with data.connector.state as state
}

# --- the settings shipped in policies/data.json ----------------------------------------------

test_shipped_defaults if {
	defaults := data.connector.settings.defaults
	defaults.legal_basis == "public-interest"
	defaults.k == 10
	defaults.egress == {
		"allow_pixels": false, "allow_pseudonyms": false, "max_result_bytes": 10485760,
		"per_study_decimals": 2, "max_labels": 16, "max_released_numbers": 100000,
	}
	{c | some c in defaults.countries} == data.connector.jurisdiction.eu_eea
	count(defaults.countries) == 30
}

test_shipped_default_purposes_are_all_permitted_purposes if {
	{p | some p in data.connector.settings.defaults.purposes} == {code | some code, entry in data.connector.purposes.catalogue; entry.permitted}
}

test_shipped_datasets_name_known_purposes_and_bases if {
	every name, _ in data.connector.settings.datasets {
		terms := decision.dataset_terms(name)
		data.connector.consent.legal_basis[terms.legal_basis]
		every p in terms.purposes {
			data.connector.purposes.catalogue[p].permitted == true
		}
		data.connector.cohort.dataset_k(name) >= 1
	}
}

test_shipped_demo_cohort_decision if {
	d := decision.access with input as patched(patched(access_request, "/dataset", "demo-cohort"), "/permit_check/claims/datasets", ["demo-cohort"])
		with data.connector.state as {"datasets": {"demo-cohort": {"studies": 120, "patients": 42}}}
	d.allow == true
	# Whatever k the DPO sets for the demo cohort (data.json), 42 patients meet it.
	some reason in d.reasons
	startswith(reason, "cohort of 42 patients meets the minimum of")
	"release aggregate results only" in d.obligations
}
