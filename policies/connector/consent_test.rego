package connector.consent_test

import data.connector.consent

settings := {
	"defaults": {"legal_basis": "public-interest"},
	"datasets": {
		"consented": {"legal_basis": "consent"},
		"research": {"legal_basis": "scientific-research"},
		"public": {"legal_basis": "public-interest"},
		"odd": {"legal_basis": "broad-consent"},
		"none": {"legal_basis": null},
	},
}

statuses := ["none", "consented", "opted-out", "withdrawn"]

# The consent statuses whose patients `include` admits to a cohort of `dataset`.
included(dataset) := {status |
	some status in statuses
	consent.include with input as {"dataset": dataset, "patients": {"consent_status": status}}
		with data.connector.settings as settings
}

request(dataset) := {"action": "access", "dataset": dataset}

deny_for(inp) := result if {
	result := consent.deny with input as inp with data.connector.settings as settings
}

reasons_for(inp) := result if {
	result := consent.reasons with input as inp with data.connector.settings as settings
}

obligations_for(inp) := result if {
	result := consent.obligations with input as inp with data.connector.settings as settings
}

ok_for(inp) if {
	consent.ok with input as inp with data.connector.settings as settings
}

# --- the legal bases -------------------------------------------------------------------------

test_legal_bases if {
	object.keys(consent.legal_basis) == {"consent", "public-interest", "scientific-research"}
	consent.legal_basis.consent.consent_required == true
	consent.legal_basis["public-interest"].consent_required == false
	consent.legal_basis["scientific-research"].consent_required == false
	every _, basis in consent.legal_basis {
		startswith(basis.dpv, "https://w3id.org/dpv#")
		every iri in basis.gdpr {
			startswith(iri, "https://w3id.org/dpv/legal/eu/gdpr#A")
		}
	}
}

# --- cohort filter ---------------------------------------------------------------------------

test_consent_basis_includes_only_consented_patients if {
	included("consented") == {"consented"}
}

test_public_interest_excludes_opted_out_and_withdrawn if {
	included("public") == {"none", "consented"}
}

test_scientific_research_excludes_opted_out_and_withdrawn if {
	included("research") == {"none", "consented"}
}

test_dataset_without_own_settings_uses_the_default_basis if {
	included("unlisted") == {"none", "consented"}
}

test_unknown_legal_basis_includes_nobody if {
	included("odd") == set()
	included("none") == set()
}

test_unexpected_status_is_excluded if {
	not consent.include with input as {"dataset": "public", "patients": {"consent_status": "pending"}}
		with data.connector.settings as settings
	not consent.include with input as {"dataset": "public", "patients": {}}
		with data.connector.settings as settings
}

test_filter_needs_a_dataset if {
	not consent.include with input as {"dataset": 7, "patients": {"consent_status": "consented"}}
		with data.connector.settings as settings
	not consent.include with input as {"patients": {"consent_status": "consented"}}
		with data.connector.settings as settings
}

# --- access ----------------------------------------------------------------------------------

test_consent_basis_for_access if {
	deny_for(request("consented")) == set()
	ok_for(request("consented"))
	reasons_for(request("consented")) == {`dataset "consented" is used on the legal basis of consent: only patients who consented are included`}
	obligations_for(request("consented")) == {"include only patients who consented, and drop those who withdraw consent while the job runs"}
}

test_opt_out_basis_for_access if {
	deny_for(request("research")) == set()
	ok_for(request("research"))
	reasons_for(request("research")) == {`dataset "research" is used on the legal basis "scientific-research": patients who opted out or withdrew consent are excluded`}
	obligations_for(request("public")) == {"exclude patients who opt out (EHDS art. 71) or withdraw consent, also while the job runs"}
}

test_unknown_legal_basis_denies_access if {
	deny_for(request("odd")) == {`dataset "odd" has an unknown legal basis "broad-consent" (expected one of: consent, public-interest, scientific-research)`}
	not ok_for(request("odd"))
	reasons_for(request("odd")) == set()
	obligations_for(request("odd")) == set()
}

test_missing_legal_basis_denies_access if {
	deny_for(request("none")) == {`dataset "none" has an unknown legal basis (none) (expected one of: consent, public-interest, scientific-research)`}
	d := consent.deny with input as request("x") with data.connector.settings as {"defaults": {}}
	d == {`dataset "x" has an unknown legal basis (none) (expected one of: consent, public-interest, scientific-research)`}
}

test_no_reason_without_a_dataset if {
	deny_for({"action": "access"}) == set()
	not ok_for({"action": "access"})
	deny_for("consented") == set()
}
