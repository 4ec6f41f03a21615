# METADATA
# title: Minimum cohort size and small cells
# description: >-
#   k is the smallest number of patients that may stand behind anything the connector lets out:
#   a cohort for access, a per-study result, a cell of an aggregate result, a count in the
#   public catalog. Each dataset has its own k in data.json ("k", default 10). Access to a
#   cohort smaller than k is denied, and counts below k are shown as "<k".
package connector.cohort

import data.connector.consent
import data.connector.decision

# The minimum cohort size of dataset `name` (undefined when the settings hold no whole number >= 1).
dataset_k(name) := minimum if {
	minimum := decision.dataset_terms(name).k
	valid_k(minimum)
}

valid_k(minimum) if {
	is_number(minimum)
	minimum >= 1
	minimum == floor(minimum)
}

# The same small-cell rule everywhere (catalog counts, egress, reports): a count n is shown as is
# when n >= k and as "<k" (e.g. "<10") otherwise.
suppressed(n, minimum) := n if n >= minimum

suppressed(n, minimum) := sprintf("<%v", [minimum]) if n < minimum

# A count of dataset `name` as the public catalog may show it.
catalog_count(name, n) := suppressed(n, dataset_k(name))

# ---------------------------------------------------------------------------------------------
# The check: the cohort (after opt-outs) has at least k patients
# ---------------------------------------------------------------------------------------------

default ok := false

ok if {
	whole(size)
	whole(excluded)
	size >= k
}

# The minimum cohort size of the requested dataset.
k := decision.terms.k if valid_k(decision.terms.k)

default size := null

size := input.cohort.size

# Patients of the dataset left out of the cohort by the consent registry (absent: none).
default excluded := 0

excluded := input.cohort.excluded

reasons contains msg if {
	ok
	msg := sprintf("cohort of %s meets the minimum of %v", [patients(size), k])
}

obligations contains msg if {
	whole(excluded)
	excluded > 0
	msg := sprintf("exclude %s (%s)", [patients(excluded), exclusion_cause])
}

exclusion_cause := "no recorded consent, opt-out or withdrawn consent" if {
	consent.basis.consent_required == true
} else := "opt-out or withdrawn consent"

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

failures contains "input.cohort.size is missing or not a number" if not is_number(size)

failures contains msg if {
	is_number(size)
	not whole(size)
	msg := sprintf("input.cohort.size must be a whole number of patients, got %v", [size])
}

failures contains msg if {
	decision.terms
	not k
	msg := sprintf(
		"dataset %q has no valid minimum cohort size k in the settings (a whole number of at least 1, got %v)",
		[decision.dataset, object.get(decision.terms, "k", null)],
	)
}

failures contains msg if {
	whole(size)
	size < k
	msg := sprintf("cohort of %s is below the minimum of %v", [patients(size), k])
}

failures contains msg if {
	not whole(excluded)
	msg := sprintf("input.cohort.excluded must be a whole number of patients, got %v", [excluded])
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# A whole, non-negative number (a count of patients, cells or bytes).
whole(n) if {
	is_number(n)
	n >= 0
	n == floor(n)
}

patients(n) := "1 patient" if n == 1 else := sprintf("%v patients", [n])
