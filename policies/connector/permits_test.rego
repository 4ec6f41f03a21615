package connector.permits_test

import data.connector.permits

state := {
	"datasets": {"ds": {"studies": 1, "patients": 42}},
	"revoked_permits": {
		"P-REVOKED": {"reason": "the HDAB upheld a complaint", "revoked_at": "2026-01-15T10:00:00Z"},
		"P-NO-TIME": {"reason": "withdrawn by the HDAB"},
		"P-NO-REASON": {},
	},
}

claims := {
	"permit_id": "P-1",
	"issuer": "https://hdab.example.eu",
	"requester": "r-1",
	"organisation": "Example Lab",
	"purposes": ["ai-development"],
	"datasets": ["ds"],
	"countries": [],
	"not_before": 1767225600,
	"expires": 4102444800,
	"conditions": ["publish the model card", "no re-identification attempts"],
}

request := {
	"action": "access",
	"dataset": "ds",
	"purpose": "ai-development",
	"requester": {"id": "r-1", "organisation": "Example Lab", "country": "DE"},
	"permit_check": {"status": "valid", "detail": "signature verified", "claims": claims},
	"cohort": {"size": 42, "excluded": 0},
}

# The request with one field replaced (or added) at a JSON pointer.
with_field(path, value) := json.patch(request, [{"op": "add", "path": path, "value": value}])

without_field(path) := json.patch(request, [{"op": "remove", "path": path}])

with_claim(name, value) := with_field(concat("/", ["/permit_check/claims", name]), value)

with_status(status, detail) := with_field("/permit_check", {"status": status, "detail": detail})

deny_for(inp) := result if {
	result := permits.deny with input as inp with data.connector.state as state
}

ok_for(inp) if {
	permits.ok with input as inp with data.connector.state as state
}

# --- a valid permit --------------------------------------------------------------------------

test_valid_permit_covering_the_request if {
	deny_for(request) == set()
	ok_for(request)
	r := permits.reasons with input as request with data.connector.state as state
	r == {"permit P-1 from https://hdab.example.eu covers this dataset, purpose and requester"}
}

test_permit_conditions_become_obligations if {
	o := permits.obligations with input as request with data.connector.state as state
	o == {"permit condition: publish the model card", "permit condition: no re-identification attempts"}
}

test_permit_without_conditions_has_no_obligations if {
	inp := json.patch(request, [{"op": "remove", "path": "/permit_check/claims/conditions"}])
	ok_for(inp)
	o := permits.obligations with input as inp with data.connector.state as state
	o == set()
}

test_permit_without_issuer_names_an_unnamed_issuer if {
	inp := json.patch(request, [{"op": "remove", "path": "/permit_check/claims/issuer"}])
	r := permits.reasons with input as inp with data.connector.state as state
	r == {"permit P-1 from an unnamed issuer covers this dataset, purpose and requester"}
	r2 := permits.reasons with input as with_claim("issuer", 42) with data.connector.state as state
	r2 == {"permit P-1 from an unnamed issuer covers this dataset, purpose and requester"}
}

test_valid_permit_without_any_connector_state if {
	ok_for(request) with data.connector.state as "not pushed yet"
	d := permits.deny with input as request with data.connector.state as "not pushed yet"
	d == set()
}

# --- verification outcomes -------------------------------------------------------------------

test_missing_permit if {
	deny_for(with_status("missing", "")) == {"no data permit was presented"}
	not ok_for(with_status("missing", ""))
}

test_raw_request_without_permit_is_a_missing_permit if {
	inp := json.patch(without_field("/permit_check"), [{"op": "add", "path": "/permit", "value": null}])
	deny_for(inp) == {"no data permit was presented"}
	deny_for(without_field("/permit_check")) == {"no data permit was presented"}
}

test_raw_request_with_an_unverified_token if {
	inp := json.patch(without_field("/permit_check"), [{"op": "add", "path": "/permit", "value": "eyJhbGciOiJFZERTQSJ9.e30.sig"}])
	deny_for(inp) == {"input.permit_check is missing or not an object: the data permit was not verified by the connector"}
	not ok_for(inp)
	deny_for(with_field("/permit_check", "valid")) == {"input.permit_check is missing or not an object: the data permit was not verified by the connector"}
}

test_expired_permit if {
	deny_for(with_status("expired", "expired at 2025-12-31T00:00:00Z")) == {"the data permit has expired: expired at 2025-12-31T00:00:00Z"}
	not ok_for(with_status("expired", "expired at 2025-12-31T00:00:00Z"))
}

test_permit_not_yet_valid if {
	deny_for(with_status("not_yet_valid", "valid from 2030-01-01")) == {"the data permit is not valid yet: valid from 2030-01-01"}
}

test_forged_permit if {
	deny_for(with_status("invalid_signature", "")) == {"the data permit's signature does not verify against the HDAB's keys"}
}

test_permit_from_an_untrusted_issuer if {
	deny_for(with_status("untrusted_issuer", "issuer https://evil.example")) == {"the data permit was not issued by a trusted Health Data Access Body: issuer https://evil.example"}
}

test_malformed_permit if {
	deny_for(with_status("malformed", "not a JWT")) == {"the data permit is malformed: not a JWT"}
	deny_for(with_field("/permit_check", {"status": "malformed", "detail": 7})) == {"the data permit is malformed"}
}

test_unknown_status if {
	deny_for(with_status("pending", "")) == {`the data permit check returned an unknown status "pending"`}
	not ok_for(with_status("pending", ""))
}

test_status_missing if {
	deny_for(with_field("/permit_check", {"detail": "x"})) == {"input.permit_check.status is missing or not a string"}
	deny_for(with_field("/permit_check", {"status": 1})) == {"input.permit_check.status is missing or not a string"}
}

test_valid_without_claims if {
	deny_for(with_field("/permit_check", {"status": "valid"})) == {"the data permit check says valid but carries no claims"}
	deny_for(with_field("/permit_check/claims", "P-1")) == {"the data permit check says valid but carries no claims"}
	not ok_for(with_field("/permit_check", {"status": "valid"}))
}

test_claims_are_ignored_unless_valid if {
	inp := with_field("/permit_check", {"status": "expired", "claims": claims})
	deny_for(inp) == {"the data permit has expired"}
	not ok_for(inp)
}

test_permit_without_id if {
	deny_for(json.patch(request, [{"op": "remove", "path": "/permit_check/claims/permit_id"}])) == {"the data permit has no permit_id claim"}
	deny_for(with_claim("permit_id", "")) == {"the data permit has no permit_id claim"}
	not ok_for(with_claim("permit_id", ""))
}

# --- revocation ------------------------------------------------------------------------------

test_revoked_permit if {
	inp := with_claim("permit_id", "P-REVOKED")
	deny_for(inp) == {"the data permit P-REVOKED has been revoked: the HDAB upheld a complaint (revoked at 2026-01-15T10:00:00Z)"}
	not ok_for(inp)
}

test_revoked_permit_without_time_or_reason if {
	deny_for(with_claim("permit_id", "P-NO-TIME")) == {"the data permit P-NO-TIME has been revoked: withdrawn by the HDAB"}
	deny_for(with_claim("permit_id", "P-NO-REASON")) == {"the data permit P-NO-REASON has been revoked: no reason recorded"}
	not ok_for(with_claim("permit_id", "P-NO-REASON"))
}

test_malformed_revocation_list_denies if {
	d := permits.deny with input as request with data.connector.state as {"revoked_permits": ["P-1"]}
	d == {"the connector's list of revoked data permits is malformed (state.revoked_permits must be an object)"}
	not permits.ok with input as request with data.connector.state as {"revoked_permits": ["P-1"]}
}

# --- coverage of the request -----------------------------------------------------------------

test_permit_for_another_dataset if {
	inp := with_field("/dataset", "other")
	deny_for(inp) == {`the data permit does not cover dataset "other" (it covers "ds")`}
	not ok_for(inp)
}

test_permit_without_datasets if {
	deny_for(with_claim("datasets", [])) == {`the data permit does not cover dataset "ds" (it covers nothing)`}
	deny_for(with_claim("datasets", "ds")) == {`the data permit does not cover dataset "ds" (it covers nothing)`}
}

test_permit_for_another_purpose if {
	inp := with_field("/purpose", "education")
	deny_for(inp) == {`the data permit does not cover purpose "education" (it covers "ai-development")`}
	not ok_for(inp)
}

test_permit_for_another_requester if {
	inp := with_field("/requester/id", "r-2")
	deny_for(inp) == {`the data permit was issued to requester "r-1", not "r-2"`}
	not ok_for(inp)
}

test_permit_without_requester_claim if {
	inp := json.patch(request, [{"op": "remove", "path": "/permit_check/claims/requester"}])
	deny_for(inp) == {`the data permit was issued to requester (none), not "r-1"`}
}

test_permit_for_another_organisation if {
	inp := with_field("/requester/organisation", "Other Lab")
	deny_for(inp) == {`the data permit was issued to organisation "Example Lab", not "Other Lab"`}
	not ok_for(inp)
}

test_requester_missing if {
	deny_for(without_field("/requester")) == {"input.requester is missing or not an object"}
	deny_for(with_field("/requester", "r-1")) == {"input.requester is missing or not an object"}
	not ok_for(without_field("/requester"))
}

test_requester_fields_missing if {
	deny_for(with_field("/requester", {"country": "DE"})) == {
		"input.requester.id is missing or not a string",
		"input.requester.organisation is missing or not a string",
	}
	deny_for(with_field("/requester/id", 1)) == {"input.requester.id is missing or not a string"}
	not ok_for(with_field("/requester/id", 1))
	not ok_for(with_field("/requester/organisation", 1))
}

# --- countries -------------------------------------------------------------------------------

test_permit_limited_to_other_countries if {
	inp := with_claim("countries", ["FR", "NL"])
	deny_for(inp) == {"the data permit does not allow access from country DE (it allows FR, NL)"}
	not ok_for(inp)
}

test_permit_limited_to_the_requester_country if {
	ok_for(with_claim("countries", ["de", "FR"]))
	deny_for(with_claim("countries", ["DE"])) == set()
}

test_permit_without_country_limit if {
	ok_for(with_claim("countries", []))
	ok_for(json.patch(request, [{"op": "remove", "path": "/permit_check/claims/countries"}]))
}

test_permit_country_check_waits_for_a_valid_country if {
	# jurisdiction.rego reports the malformed country; the permit adds nothing
	deny_for(with_field("/requester/country", "Germany")) == set()
	not ok_for(with_claim("countries", ["FR"]))
}

test_malformed_countries_claim if {
	deny_for(with_claim("countries", "DE")) == {"the data permit's countries claim is not a list of country codes"}
	deny_for(with_claim("countries", ["DE", 49])) == {"the data permit's countries claim is not a list of country codes"}
	not ok_for(with_claim("countries", ["DE", 49]))
}

test_malformed_conditions_claim if {
	deny_for(with_claim("conditions", "publish")) == {"the data permit's conditions claim is not a list of texts"}
	deny_for(with_claim("conditions", ["publish", 1])) == {"the data permit's conditions claim is not a list of texts"}
	not ok_for(with_claim("conditions", "publish"))
}

# --- fail closed -----------------------------------------------------------------------------

test_non_object_input if {
	deny_for("P-1") == {"no data permit was presented", "input.requester is missing or not an object"}
	not ok_for("P-1")
	deny_for({}) == {"no data permit was presented", "input.requester is missing or not an object"}
}
