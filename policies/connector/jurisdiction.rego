# METADATA
# title: Jurisdiction
# description: >-
#   The countries from which a requester may use a dataset: the dataset's "countries" in
#   data.json (EU/EEA by default). The requester's country is an ISO 3166-1 alpha-2 code.
package connector.jurisdiction

import data.connector.decision

# The 27 EU member states and the 3 other EEA states (Iceland, Liechtenstein, Norway).
# Greece is GR in ISO 3166-1 (the EU's own abbreviation is EL).
eu_eea := {
	"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
	"IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK", "IS", "LI", "NO",
}

# ---------------------------------------------------------------------------------------------
# The check: the requester's country is in the dataset's list
# ---------------------------------------------------------------------------------------------

default ok := false

ok if {
	is_array(decision.terms.countries)
	country in decision.terms.countries
}

# The requester's country, upper-cased, when it is a two-letter code.
country := upper(input.requester.country) if {
	is_string(input.requester.country)
	regex.match(`^[A-Za-z]{2}$`, input.requester.country)
}

reasons contains msg if {
	ok
	msg := sprintf("requester country %s is allowed for dataset %s", [country, input.dataset])
}

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

default raw_country := null

raw_country := input.requester.country

# The dataset's allowed countries as listed in the settings (upper-case codes; null when absent).
listed := object.get(decision.terms, "countries", null)

# How a DPO names the allowed countries in a reason.
allowed_label := "EU/EEA" if {
	{c | some c in listed} == eu_eea
} else := concat(", ", sort([c | some c in listed; is_string(c)]))

failures contains "input.requester.country is missing or not a string" if not is_string(raw_country)

failures contains msg if {
	is_string(raw_country)
	not country
	msg := sprintf("input.requester.country %q is not an ISO 3166-1 alpha-2 code (two letters, e.g. DE)", [raw_country])
}

failures contains msg if {
	decision.terms
	not is_array(listed)
	msg := sprintf("dataset %q has no list of allowed countries in the settings", [decision.dataset])
}

failures contains msg if {
	is_array(listed)
	country
	not country in listed
	msg := sprintf(
		"requester country %s is outside the countries allowed for dataset %s (%s)",
		[country, decision.dataset, allowed_label],
	)
}
