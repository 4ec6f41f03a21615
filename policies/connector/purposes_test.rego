package connector.purposes_test

import data.connector.purposes

settings := {
	"defaults": {
		"legal_basis": "public-interest",
		"purposes": ["scientific-research", "ai-development"],
		"countries": ["DE"],
		"k": 10,
		"egress": {"allow_pixels": false, "allow_pseudonyms": false, "max_result_bytes": 1000},
	},
	"datasets": {
		"ds": {"purposes": ["ai-development", "education"]},
		"no-list": {"purposes": "all"},
	},
}

state := {"datasets": {"ds": {"studies": 1, "patients": 42}}}

request(dataset, purpose) := {"action": "access", "dataset": dataset, "purpose": purpose}

deny_for(inp) := result if {
	result := purposes.deny with input as inp
		with data.connector.settings as settings
		with data.connector.state as state
}

ok_for(inp) if {
	purposes.ok with input as inp
		with data.connector.settings as settings
		with data.connector.state as state
}

reasons_for(inp) := result if {
	result := purposes.reasons with input as inp
		with data.connector.settings as settings
		with data.connector.state as state
}

permitted_codes := {
	"public-interest-health", "policy-making", "official-statistics", "education",
	"scientific-research", "product-development", "ai-development", "care-improvement",
}

prohibited_codes := {"detrimental-decision", "insurance-or-credit-decision", "advertising", "harmful-products", "weapons"}

# --- the catalogue ---------------------------------------------------------------------------

test_catalogue_holds_exactly_the_ehds_codes if {
	object.keys(purposes.catalogue) == permitted_codes | prohibited_codes
}

test_art_53_purposes_are_permitted if {
	every code in permitted_codes {
		purposes.catalogue[code].permitted == true
		startswith(purposes.catalogue[code].article, "53(1)(")
	}
}

test_art_54_purposes_are_prohibited if {
	every code in prohibited_codes {
		purposes.catalogue[code].permitted == false
		startswith(purposes.catalogue[code].article, "54(")
	}
}

test_every_purpose_maps_to_a_dpv_purpose if {
	every _, entry in purposes.catalogue {
		startswith(entry.dpv, "https://w3id.org/dpv#")
		entry.dpv_match in {"exact", "broad", "related"}
		count(entry.label) > 0
	}
}

test_ai_development_is_art_53_1_e_ii if {
	purposes.catalogue["ai-development"].article == "53(1)(e)(ii)"
	purposes.catalogue["ai-development"].dpv == "https://w3id.org/dpv#ResearchAndDevelopment"
}

# --- permitted -------------------------------------------------------------------------------

test_permitted_purpose_that_the_dataset_allows if {
	inp := request("ds", "ai-development")
	deny_for(inp) == set()
	ok_for(inp)
	reasons_for(inp) == {`purpose "ai-development" is permitted for secondary use (EHDS art. 53(1)(e)(ii)) and dataset "ds" allows it`}
}

test_dataset_without_own_purposes_uses_the_defaults if {
	inp := request("other", "scientific-research")
	deny_for(inp) == set()
	ok_for(inp)
}

test_permitted_purpose_that_the_dataset_does_not_allow if {
	inp := request("ds", "scientific-research")
	deny_for(inp) == {`purpose "scientific-research" is not among the purposes dataset "ds" allows`}
	not ok_for(inp)
	reasons_for(inp) == set()
}

test_dataset_whose_purposes_are_not_a_list_allows_none if {
	inp := request("no-list", "ai-development")
	deny_for(inp) == {`purpose "ai-development" is not among the purposes dataset "no-list" allows`}
	not ok_for(inp)
}

# --- prohibited and unknown ------------------------------------------------------------------

test_advertising_is_prohibited if {
	inp := request("ds", "advertising")
	deny_for(inp) == {`purpose "advertising" is prohibited for secondary use (EHDS art. 54(c): advertising or marketing activities)`}
	not ok_for(inp)
}

test_every_prohibited_purpose_is_denied_even_if_a_dataset_lists_it if {
	every code in prohibited_codes {
		inp := request("listed", code)
		d := purposes.deny with input as inp
			with data.connector.settings as {"datasets": {"listed": {"purposes": [code]}}}
			with data.connector.state as state
		some msg in d
		startswith(msg, sprintf("purpose %q is prohibited for secondary use (EHDS art. 54(", [code]))
		not purposes.ok with input as inp
			with data.connector.settings as {"datasets": {"listed": {"purposes": [code]}}}
	}
}

test_unknown_purpose_is_denied if {
	inp := request("ds", "marketing-research")
	deny_for(inp) == {`purpose "marketing-research" is unknown (it is not an EHDS art. 53 or art. 54 purpose code)`}
	not ok_for(inp)
}

test_missing_purpose_is_denied if {
	deny_for({"action": "access", "dataset": "ds"}) == {"input.purpose is missing or not a string"}
	deny_for(request("ds", 7)) == {"input.purpose is missing or not a string"}
	not ok_for({"action": "access", "dataset": "ds"})
}

test_no_dataset_reason_without_dataset_terms if {
	# the decision package reports the missing dataset; purposes adds nothing
	deny_for(request(7, "ai-development")) == set()
	not ok_for(request(7, "ai-development"))
}

test_non_object_input_is_denied if {
	deny_for("ai-development") == {"input.purpose is missing or not a string"}
	not ok_for("ai-development")
}
