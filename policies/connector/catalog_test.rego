package connector.catalog_test

import data.connector.catalog

settings := {
	"defaults": {
		"legal_basis": "public-interest",
		"purposes": ["scientific-research", "ai-development"],
		"countries": ["BE", "NL"],
		"k": 10,
	},
	"datasets": {
		"small-k": {"k": 3, "legal_basis": "consent"},
		"with-prohibited": {"purposes": ["advertising", "scientific-research", "no-such-purpose"]},
		"bad-basis": {"legal_basis": "because"},
		"bad-k": {"k": 0},
		"copyable": {"copies": true},
		"copies-not-boolean": {"copies": "yes"},
	},
}

record_for(dataset, counts) := result if {
	result := catalog.record with input as {"dataset": dataset, "counts": counts}
		with data.connector.settings as settings
}

test_record_states_the_terms_of_the_dataset if {
	result := record_for("any", {})
	[p.code | some p in result.offer.purposes] == ["scientific-research", "ai-development"]
	result.offer.purposes[0].dpv == "https://w3id.org/dpv#ScientificResearch"
	result.offer.purposes[0].article == "53(1)(e)"
	result.offer.countries == ["BE", "NL"]
	result.offer.k == 10
	result.offer.legal_basis.code == "public-interest"
	result.offer.legal_basis.dpv == "https://w3id.org/dpv#PublicInterest"
	"https://w3id.org/dpv/legal/eu/gdpr#A9-2-i" in result.offer.legal_basis.gdpr
}

test_dataset_settings_override_the_defaults if {
	result := record_for("small-k", {})
	result.offer.k == 3
	result.offer.legal_basis.code == "consent"
}

test_prohibited_and_unknown_purposes_are_never_offered if {
	result := record_for("with-prohibited", {})
	[p.code | some p in result.offer.purposes] == ["scientific-research"]
}

test_counts_below_k_are_suppressed if {
	result := record_for("any", {"records": 25, "individuals": 9})
	result.counts == {"records": 25, "individuals": "<10"}
}

test_counts_at_k_are_shown if {
	record_for("small-k", {"individuals": 3}).counts == {"individuals": 3}
}

test_counts_that_are_not_whole_numbers_are_left_out if {
	record_for("any", {"records": -1, "individuals": "12", "studies": 2.5}).counts == {}
}

test_no_record_without_valid_terms if {
	not record_for("bad-basis", {})
	not record_for("bad-k", {})
	not catalog.record with input as {"dataset": 42} with data.connector.settings as settings
}

test_copies_are_refused_unless_the_dataset_allows_them if {
	record_for("any", {}).offer.copies == false
	record_for("copies-not-boolean", {}).offer.copies == false
	record_for("copyable", {}).offer.copies == true
}
