# METADATA
# title: Purposes of secondary use
# description: >-
#   The purposes for which electronic health data may (EHDS, Regulation (EU) 2025/327, art. 53(1))
#   and may not (art. 54) be used for secondary use, as the codes that datasets, data permits and
#   access requests use, each mapped to a purpose of the W3C Data Privacy Vocabulary (DPV).
#   A request is allowed only for a permitted purpose that the dataset's settings also allow;
#   a prohibited purpose or a code not in this catalogue is always denied.
package connector.purposes

import data.connector.decision

# "dpv" is the DPV purpose the code maps to; "dpv_match" says how close it is (SKOS terms):
# "exact", "broad" (the DPV term is broader than the code) or "related" (no DPV purpose says
# this; the nearest one is given).
catalogue := {
	"public-interest-health": {
		"label": "public interest in public or occupational health (protection against serious cross-border threats to health, public health surveillance, quality and safety of healthcare, medicinal products or medical devices)",
		"article": "53(1)(a)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#PublicBenefit",
		"dpv_match": "broad",
	},
	"policy-making": {
		"label": "policy-making and regulatory activities of public sector bodies and Union institutions in the health or care sector",
		"article": "53(1)(b)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#PublicPolicyMaking",
		"dpv_match": "broad",
	},
	"official-statistics": {
		"label": "statistics related to the health or care sectors, such as national, multi-national and Union-level official statistics",
		"article": "53(1)(c)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#ProvideOfficialStatistics",
		"dpv_match": "exact",
	},
	"education": {
		"label": "education or teaching in the health or care sectors at vocational or higher education level",
		"article": "53(1)(d)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#ImprovePublicServices",
		"dpv_match": "related",
	},
	"scientific-research": {
		"label": "scientific research related to the health or care sectors that contributes to public health or health technology assessment, or ensures high levels of quality and safety of healthcare, medicinal products or medical devices",
		"article": "53(1)(e)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#ScientificResearch",
		"dpv_match": "broad",
	},
	"product-development": {
		"label": "development and innovation activities for products or services, as part of such scientific research",
		"article": "53(1)(e)(i)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#ResearchAndDevelopment",
		"dpv_match": "broad",
	},
	"ai-development": {
		"label": "training, testing and evaluating algorithms, including in medical devices, in vitro diagnostic medical devices, AI systems and digital health applications",
		"article": "53(1)(e)(ii)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#ResearchAndDevelopment",
		"dpv_match": "broad",
	},
	"care-improvement": {
		"label": "improving the delivery of care, treatment optimisation and the provision of healthcare, based on the health data of other natural persons",
		"article": "53(1)(f)",
		"permitted": true,
		"dpv": "https://w3id.org/dpv#ImproveHealthcare",
		"dpv_match": "exact",
	},
	"detrimental-decision": {
		"label": "taking decisions detrimental to a natural person or a group of natural persons based on their electronic health data",
		"article": "54(a)",
		"permitted": false,
		"dpv": "https://w3id.org/dpv#ServiceAccessDetermination",
		"dpv_match": "related",
	},
	"insurance-or-credit-decision": {
		"label": "decisions on job offers, or on less favourable terms for goods or services, such as excluding a person from an insurance or credit contract or changing their premiums or loan conditions",
		"article": "54(b)",
		"permitted": false,
		"dpv": "https://w3id.org/dpv#CustomerSolvencyMonitoring",
		"dpv_match": "related",
	},
	"advertising": {
		"label": "advertising or marketing activities",
		"article": "54(c)",
		"permitted": false,
		"dpv": "https://w3id.org/dpv#Marketing",
		"dpv_match": "exact",
	},
	"harmful-products": {
		"label": "developing products or services that may harm individuals, public health or society, such as illicit drugs, alcoholic beverages, tobacco and nicotine products, or addictive products",
		"article": "54(d)",
		"permitted": false,
		"dpv": "https://w3id.org/dpv#ResearchAndDevelopment",
		"dpv_match": "broad",
	},
	"weapons": {
		"label": "developing weaponry",
		"article": "54(d)",
		"permitted": false,
		"dpv": "https://w3id.org/dpv#ResearchAndDevelopment",
		"dpv_match": "broad",
	},
}

# ---------------------------------------------------------------------------------------------
# The check: a permitted purpose that the dataset's settings also allow
# ---------------------------------------------------------------------------------------------

default ok := false

ok if {
	catalogue[input.purpose].permitted == true
	input.purpose in decision.terms.purposes
}

reasons contains msg if {
	ok
	msg := sprintf(
		"purpose %q is permitted for secondary use (EHDS art. %s) and dataset %q allows it",
		[input.purpose, catalogue[input.purpose].article, input.dataset],
	)
}

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

purpose := object.get(decision.request, "purpose", null)

# The catalogue entry of the requested purpose (undefined for an unknown code).
entry := catalogue[purpose]

failures contains "input.purpose is missing or not a string" if not is_string(purpose)

failures contains msg if {
	entry.permitted == false
	msg := sprintf("purpose %q is prohibited for secondary use (EHDS art. %s: %s)", [purpose, entry.article, entry.label])
}

failures contains msg if {
	is_string(purpose)
	not entry
	msg := sprintf("purpose %q is unknown (it is not an EHDS art. 53 or art. 54 purpose code)", [purpose])
}

failures contains msg if {
	entry.permitted == true
	decision.terms
	not purpose in object.get(decision.terms, "purposes", [])
	msg := sprintf("purpose %q is not among the purposes dataset %q allows", [purpose, decision.dataset])
}
