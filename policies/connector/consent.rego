# METADATA
# title: Consent and opt-out
# description: >-
#   A dataset's legal basis decides which patients may be in a cohort. Under "consent" only
#   patients who consented are included. Under "public-interest" and "scientific-research"
#   everyone is included except patients who opted out (EHDS art. 71) or withdrew consent.
#   The rule `include` is compiled by the connector into one SQL WHERE clause over the consent
#   registry (table `patients`, column `consent_status`: "none" when there is no record,
#   "consented", "opted-out" or "withdrawn"), so a whole cohort is filtered in one query.
package connector.consent

import data.connector.decision

# Each legal basis, with its DPV legal basis, its GDPR articles (DPV's EU GDPR extension), whether
# positive consent is required, and the consent statuses whose patients are included.
legal_basis := {
	"consent": {
		"label": "explicit consent of the patient",
		"consent_required": true,
		"included_statuses": ["consented"],
		"dpv": "https://w3id.org/dpv#Consent",
		"gdpr": [
			"https://w3id.org/dpv/legal/eu/gdpr#A6-1-a",
			"https://w3id.org/dpv/legal/eu/gdpr#A9-2-a",
		],
	},
	"public-interest": {
		"label": "public interest in the area of public health",
		"consent_required": false,
		"included_statuses": ["none", "consented"],
		"dpv": "https://w3id.org/dpv#PublicInterest",
		"gdpr": [
			"https://w3id.org/dpv/legal/eu/gdpr#A6-1-e",
			"https://w3id.org/dpv/legal/eu/gdpr#A9-2-i",
		],
	},
	"scientific-research": {
		"label": "scientific research in the public interest",
		"consent_required": false,
		"included_statuses": ["none", "consented"],
		"dpv": "https://w3id.org/dpv#PublicInterest",
		"gdpr": [
			"https://w3id.org/dpv/legal/eu/gdpr#A6-1-e",
			"https://w3id.org/dpv/legal/eu/gdpr#A9-2-j",
		],
	},
}

# Cohort filter: true for a patient (input.patients.consent_status) who may be in a cohort of
# dataset input.dataset. The connector compiles it, with input.patients unknown, into one SQL
# condition over its consent registry (table patients, column consent_status):
#   WHERE patients.consent_status IN ('consented')            legal basis consent
#   WHERE patients.consent_status IN ('none', 'consented')    public-interest, scientific-research
# and into a filter that holds for nobody when the dataset's legal basis is unknown. Listing the
# statuses that are included, not those excluded, means that an unexpected status excludes.
include if {
	statuses := legal_basis[decision.dataset_terms(input.dataset).legal_basis].included_statuses
	input.patients.consent_status in statuses
}

# ---------------------------------------------------------------------------------------------
# The check for access: the dataset has a known legal basis
# ---------------------------------------------------------------------------------------------

default ok := false

ok if basis

# The legal basis of the requested dataset (undefined when it is not in the table above).
basis := legal_basis[decision.terms.legal_basis]

reasons contains msg if {
	basis.consent_required == true
	msg := sprintf("dataset %q is used on the legal basis of consent: only patients who consented are included", [input.dataset])
}

reasons contains msg if {
	basis.consent_required == false
	msg := sprintf(
		"dataset %q is used on the legal basis %q: patients who opted out or withdrew consent are excluded",
		[input.dataset, decision.terms.legal_basis],
	)
}

obligations contains "include only patients who consented, and drop those who withdraw consent while the job runs" if {
	basis.consent_required == true
}

obligations contains "exclude patients who opt out (EHDS art. 71) or withdraw consent, also while the job runs" if {
	basis.consent_required == false
}

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

failures contains msg if {
	decision.terms
	not basis
	msg := sprintf(
		"dataset %q has an unknown legal basis %s (expected one of: %s)",
		[decision.dataset, shown(object.get(decision.terms, "legal_basis", null)), concat(", ", sort(object.keys(legal_basis)))],
	)
}

shown(value) := sprintf("%q", [value]) if is_string(value) else := "(none)"
