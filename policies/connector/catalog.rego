# METADATA
# title: What the public catalog says about a dataset
# description: >-
#   The catalog record of a dataset states its terms as an ODRL offer and its counts. Both come
#   from here, so the catalog can never promise more than the access policy allows or show a
#   count that the small-cell rule hides. The connector asks for data.connector.catalog.record
#   with input {"dataset": NAME, "counts": {"records": N, "individuals": M}} and gets
#     {"offer": {"purposes": [...], "legal_basis": {...}, "countries": [...], "k": K},
#      "counts": {"records": N or "<K", "individuals": M or "<K"}}
#   "copies" in the offer says whether the dataset may also be transferred as an encrypted copy
#   (the DSP EncryptedDataset-PULL format): only where the dataset's settings say "copies": true.
#   The record is undefined when the dataset's settings are not valid (no catalog record then).
package connector.catalog

import data.connector.cohort
import data.connector.consent
import data.connector.decision
import data.connector.purposes

terms := decision.dataset_terms(input.dataset)

# The purposes the dataset's settings allow that EHDS art. 53 permits, in the settings' order,
# each with its label, article and DPV purpose. A prohibited or unknown code is never offered.
offered_purposes := [purpose |
	some code in terms.purposes
	entry := purposes.catalogue[code]
	entry.permitted == true
	purpose := {"code": code, "label": entry.label, "article": entry.article, "dpv": entry.dpv}
]

legal_basis := {"code": code, "dpv": basis.dpv, "gdpr": basis.gdpr} if {
	code := terms.legal_basis
	basis := consent.legal_basis[code]
}

offer := {
	"purposes": offered_purposes,
	"legal_basis": legal_basis,
	"countries": terms.countries,
	"k": cohort.dataset_k(input.dataset),
	"copies": copies,
}

# Compute-to-data is the only way in unless the DPO explicitly allows copies of the dataset.
default copies := false

copies if terms.copies == true

# Every count the connector hands in, as the catalog may show it (the same small-cell rule as
# everywhere: below k it becomes "<k"). A count that is not a whole number is left out.
counts := {name: cohort.catalog_count(input.dataset, n) |
	some name, n in object.get(input, "counts", {})
	cohort.whole(n)
}

record := {"offer": offer, "counts": counts}
