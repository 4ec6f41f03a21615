package connector.jurisdiction_test

import data.connector.jurisdiction

eu_eea_list := [
	"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
	"IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK", "IS", "LI", "NO",
]

settings := {
	"defaults": {"countries": eu_eea_list},
	"datasets": {
		"nordic": {"countries": ["DK", "SE", "NO", "FI", "IS"]},
		"no-list": {"countries": "EU"},
	},
}

request(dataset, country) := {"action": "access", "dataset": dataset, "requester": {"id": "r-1", "country": country}}

deny_for(inp) := result if {
	result := jurisdiction.deny with input as inp with data.connector.settings as settings
}

ok_for(inp) if {
	jurisdiction.ok with input as inp with data.connector.settings as settings
}

test_eu_eea_has_30_states if {
	count(jurisdiction.eu_eea) == 30
	jurisdiction.eu_eea == {c | some c in eu_eea_list}
	not "GB" in jurisdiction.eu_eea
	not "CH" in jurisdiction.eu_eea
}

test_requester_in_the_eu if {
	inp := request("demo", "DE")
	deny_for(inp) == set()
	ok_for(inp)
	r := jurisdiction.reasons with input as inp with data.connector.settings as settings
	r == {"requester country DE is allowed for dataset demo"}
}

test_requester_in_the_eea_outside_the_eu if {
	ok_for(request("demo", "NO"))
	ok_for(request("demo", "LI"))
}

test_lower_case_country_is_accepted if {
	ok_for(request("demo", "fr"))
	r := jurisdiction.reasons with input as request("demo", "fr") with data.connector.settings as settings
	r == {"requester country FR is allowed for dataset demo"}
}

test_requester_outside_the_eu_eea if {
	inp := request("demo", "US")
	deny_for(inp) == {"requester country US is outside the countries allowed for dataset demo (EU/EEA)"}
	not ok_for(inp)
	deny_for(request("demo", "GB")) == {"requester country GB is outside the countries allowed for dataset demo (EU/EEA)"}
}

test_dataset_with_its_own_countries if {
	ok_for(request("nordic", "DK"))
	deny_for(request("nordic", "DE")) == {"requester country DE is outside the countries allowed for dataset nordic (DK, FI, IS, NO, SE)"}
	not ok_for(request("nordic", "DE"))
}

test_dataset_without_a_country_list if {
	deny_for(request("no-list", "DE")) == {`dataset "no-list" has no list of allowed countries in the settings`}
	not ok_for(request("no-list", "DE"))
}

test_country_missing if {
	deny_for({"action": "access", "dataset": "demo", "requester": {"id": "r-1"}}) == {"input.requester.country is missing or not a string"}
	deny_for({"action": "access", "dataset": "demo"}) == {"input.requester.country is missing or not a string"}
	deny_for(request("demo", 49)) == {"input.requester.country is missing or not a string"}
	not ok_for(request("demo", 49))
}

test_country_not_an_alpha_2_code if {
	deny_for(request("demo", "Germany")) == {`input.requester.country "Germany" is not an ISO 3166-1 alpha-2 code (two letters, e.g. DE)`}
	deny_for(request("demo", "DEU")) == {`input.requester.country "DEU" is not an ISO 3166-1 alpha-2 code (two letters, e.g. DE)`}
	deny_for(request("demo", "")) == {`input.requester.country "" is not an ISO 3166-1 alpha-2 code (two letters, e.g. DE)`}
	not ok_for(request("demo", "D1"))
}

test_non_object_input if {
	deny_for("DE") == {"input.requester.country is missing or not a string"}
	not ok_for("DE")
}

# Country codes in policies/data.json must be upper-case ISO 3166-1 alpha-2 codes: the check
# compares them as written.
test_shipped_country_lists_are_upper_case_codes if {
	every c in data.connector.settings.defaults.countries {
		regex.match(`^[A-Z]{2}$`, c)
	}
	every _, own in data.connector.settings.datasets {
		every c in object.get(own, "countries", []) {
			regex.match(`^[A-Z]{2}$`, c)
		}
	}
}

test_lower_case_codes_in_the_settings_do_not_match if {
	not jurisdiction.ok with input as request("x", "DE") with data.connector.settings as {"defaults": {"countries": ["de"]}}
}
