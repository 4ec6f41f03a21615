# METADATA
# title: Data permits
# description: >-
#   Access needs a data permit issued by a Health Data Access Body (HDAB, EHDS art. 68): a signed
#   JWT. The connector verifies its signature against the HDAB's keys and its validity period
#   before the policy runs, and puts the outcome in input.permit_check. This package checks that
#   the permit is valid, not revoked (data.connector.state.revoked_permits), and covers the
#   requested dataset, purpose, requester, organisation and the requester's country. Each
#   condition of the permit becomes an obligation.
package connector.permits

import data.connector.decision
import data.connector.jurisdiction

# One reason per outcome of the connector's verification (input.permit_check.status).
status_reasons := {
	"missing": "no data permit was presented",
	"expired": "the data permit has expired",
	"not_yet_valid": "the data permit is not valid yet",
	"invalid_signature": "the data permit's signature does not verify against the HDAB's keys",
	"untrusted_issuer": "the data permit was not issued by a trusted Health Data Access Body",
	"malformed": "the data permit is malformed",
}

# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------

default ok := false

ok if {
	input.permit_check.status == "valid"
	c := input.permit_check.claims
	is_string(c.permit_id)
	c.permit_id != ""
	is_object(revoked)
	object.get(revoked, c.permit_id, null) == null
	is_array(c.datasets)
	input.dataset in c.datasets
	is_array(c.purposes)
	input.purpose in c.purposes
	is_string(input.requester.id)
	c.requester == input.requester.id
	is_string(input.requester.organisation)
	c.organisation == input.requester.organisation
	countries_valid
	country_allowed
	conditions_valid
}

# The connector's revoked permits, keyed by permit id (absent state: none are revoked). The
# check is one key lookup, whatever the number of revoked permits.
revoked := object.get(decision.state, "revoked_permits", {})

claims := input.permit_check.claims if {
	input.permit_check.status == "valid"
	is_object(input.permit_check.claims)
}

# An empty or absent "countries" claim puts no limit on the requester's country.
claimed_countries := object.get(claims, "countries", [])

countries_valid if {
	is_array(claimed_countries)
	every c in claimed_countries {
		is_string(c)
	}
}

country := jurisdiction.country

country_allowed if claimed_countries == []

country_allowed if country in claimed_countries

country_allowed if country in permit_countries

permit_countries := {upper(c) | some c in claimed_countries; is_string(c)}

# The permit's conditions (absent: none); each one becomes an obligation.
conditions := object.get(claims, "conditions", [])

conditions_valid if {
	is_array(conditions)
	every c in conditions {
		is_string(c)
	}
}

reasons contains msg if {
	ok
	msg := sprintf("permit %s from %s covers this dataset, purpose and requester", [claims.permit_id, issuer])
}

issuer := claims.issuer if is_string(claims.issuer) else := "an unnamed issuer"

obligations contains msg if {
	ok
	some condition in conditions
	msg := sprintf("permit condition: %s", [condition])
}

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

request := decision.request

dataset := object.get(request, "dataset", null)

purpose := object.get(request, "purpose", null)

permit_check := object.get(request, "permit_check", null)

# The verification outcome. A request that the connector did not enrich carries the raw "permit"
# instead: null or absent means that no permit was presented; a token means that it was never
# verified, which the policy cannot accept.
default check := {"status": "unverified"}

check := permit_check if is_object(permit_check)

check := {"status": "missing"} if {
	permit_check == null
	object.get(request, "permit", null) == null
}

status := object.get(check, "status", null)

permit_id := claims.permit_id if {
	is_string(claims.permit_id)
	claims.permit_id != ""
}

revocation := object.get(revoked, permit_id, null) if is_object(revoked)

requester := input.requester if is_object(input.requester)

default requester_id := null

requester_id := requester.id

default organisation := null

organisation := requester.organisation

failures contains "input.permit_check is missing or not an object: the data permit was not verified by the connector" if {
	status == "unverified"
}

failures contains "input.permit_check.status is missing or not a string" if not is_string(status)

failures contains msg if {
	text := status_reasons[status]
	msg := with_detail(text, object.get(check, "detail", ""))
}

failures contains msg if {
	is_string(status)
	not status in {"valid", "unverified"}
	not status_reasons[status]
	msg := sprintf("the data permit check returned an unknown status %q", [status])
}

failures contains "the data permit check says valid but carries no claims" if {
	status == "valid"
	not claims
}

failures contains "the data permit has no permit_id claim" if {
	claims
	not permit_id
}

failures contains "the connector's list of revoked data permits is malformed (state.revoked_permits must be an object)" if {
	not is_object(revoked)
}

failures contains msg if {
	revocation != null
	msg := sprintf("the data permit %s has been revoked: %s", [permit_id, revocation_text(revocation)])
}

failures contains msg if {
	claims
	is_string(dataset)
	not covers(object.get(claims, "datasets", null), dataset)
	msg := sprintf("the data permit does not cover dataset %q (it covers %s)", [dataset, listed(object.get(claims, "datasets", null))])
}

failures contains msg if {
	claims
	is_string(purpose)
	not covers(object.get(claims, "purposes", null), purpose)
	msg := sprintf("the data permit does not cover purpose %q (it covers %s)", [purpose, listed(object.get(claims, "purposes", null))])
}

failures contains "input.requester is missing or not an object" if not requester

failures contains "input.requester.id is missing or not a string" if {
	requester
	not is_string(requester_id)
}

failures contains "input.requester.organisation is missing or not a string" if {
	requester
	not is_string(organisation)
}

failures contains msg if {
	claims
	is_string(requester_id)
	object.get(claims, "requester", null) != requester_id
	msg := sprintf("the data permit was issued to requester %s, not %q", [shown(object.get(claims, "requester", null)), requester_id])
}

failures contains msg if {
	claims
	is_string(organisation)
	object.get(claims, "organisation", null) != organisation
	msg := sprintf(
		"the data permit was issued to organisation %s, not %q",
		[shown(object.get(claims, "organisation", null)), organisation],
	)
}

failures contains "the data permit's countries claim is not a list of country codes" if {
	claims
	not countries_valid
}

failures contains msg if {
	count(permit_countries) > 0
	country
	not country in permit_countries
	msg := sprintf("the data permit does not allow access from country %s (it allows %s)", [country, concat(", ", sort(permit_countries))])
}

failures contains "the data permit's conditions claim is not a list of texts" if {
	claims
	not conditions_valid
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

covers(list, value) if {
	is_array(list)
	value in list
}

listed(list) := concat(", ", [sprintf("%q", [x]) | some x in list; is_string(x)]) if {
	is_array(list)
	count(list) > 0
} else := "nothing"

shown(value) := sprintf("%q", [value]) if is_string(value) else := "(none)"

with_detail(text, detail) := sprintf("%s: %s", [text, detail]) if {
	is_string(detail)
	detail != ""
} else := text

revocation_text(entry) := sprintf("%s (revoked at %s)", [entry.reason, entry.revoked_at]) if {
	is_string(entry.reason)
	is_string(entry.revoked_at)
} else := entry.reason if {
	is_string(entry.reason)
} else := "no reason recorded"
