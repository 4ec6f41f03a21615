# METADATA
# title: Egress
# description: >-
#   What a job may release from the connector. Per-study results need a cohort of at least k
#   patients (below k only aggregates may leave); no reported cell may count fewer than k
#   patients; pixel data and pseudonyms leave only when the dataset's "egress" settings allow
#   them; and a result may not be larger than the dataset's max_result_bytes.
package connector.egress

import data.connector.cohort
import data.connector.decision

kinds := {"aggregate", "per-study"}

# ---------------------------------------------------------------------------------------------
# The check for a release
# ---------------------------------------------------------------------------------------------

default ok := false

ok if {
	cohort.whole(cohort_size)
	k
	size_ok
	cells_ok
	pixels_ok
	pseudonyms_ok
	cohort.whole(size_in_bytes)
	size_in_bytes <= max_bytes
}

k := cohort.k

# The dataset's egress terms: only an explicit true allows pixels or pseudonyms to leave.
egress_terms := decision.terms.egress

pixels_allowed if egress_terms.allow_pixels == true

pseudonyms_allowed if egress_terms.allow_pseudonyms == true

max_bytes := egress_terms.max_result_bytes if is_number(egress_terms.max_result_bytes)

# The result described by the request. Its fields are read with object.get so that a missing
# field is a reason to deny, never an evaluation error; a missing min_cell is not taken as null.
default result := {}

result := input.result if is_object(input.result)

kind := object.get(result, "kind", null)

cohort_size := object.get(result, "cohort_size", null)

min_cell := object.get(result, "min_cell", "missing")

contains_pixels := object.get(result, "contains_pixels", null)

contains_pseudonyms := object.get(result, "contains_pseudonyms", null)

size_in_bytes := object.get(result, "bytes", null)

size_ok if kind == "aggregate"

size_ok if {
	kind == "per-study"
	cohort_size >= k
}

cells_ok if min_cell == null

cells_ok if {
	cohort.whole(min_cell)
	min_cell >= k
}

pixels_ok if contains_pixels == false

pixels_ok if {
	contains_pixels == true
	pixels_allowed
}

pseudonyms_ok if contains_pseudonyms == false

pseudonyms_ok if {
	contains_pseudonyms == true
	pseudonyms_allowed
}

reasons contains msg if {
	ok
	msg := sprintf("%s result of a cohort of %v patients may leave dataset %q", [kind, cohort_size, input.dataset])
}

reasons contains msg if {
	ok
	cohort.whole(min_cell)
	msg := sprintf("every result cell counts at least %v patients (smallest: %v)", [k, min_cell])
}

reasons contains msg if {
	ok
	msg := sprintf("the result is %v bytes, within the maximum of %v", [size_in_bytes, max_bytes])
}

# Obligations of a release, given with a denial too: what would make the result releasable.
obligations contains msg if {
	cohort.whole(min_cell)
	min_cell < k
	msg := sprintf("suppress cells below %v", [k])
}

obligations contains "release aggregate results only" if {
	kind == "per-study"
	cohort.whole(cohort_size)
	cohort_size < k
}

# ---------------------------------------------------------------------------------------------
# Why the check fails (worked out only when it does)
# ---------------------------------------------------------------------------------------------

deny := set() if ok else := failures

result_given if is_object(input.result)

failures contains "input.result is missing or not an object" if not result_given

failures contains msg if {
	result_given
	not kind in kinds
	msg := sprintf("input.result.kind must be \"aggregate\" or \"per-study\", got %s", [json.marshal(kind)])
}

failures contains "input.result.cohort_size is missing or not a whole number of patients" if {
	result_given
	not cohort.whole(cohort_size)
}

failures contains msg if {
	decision.terms
	not k
	msg := sprintf("dataset %q has no valid minimum cohort size k in the settings", [decision.dataset])
}

failures contains msg if {
	kind == "per-study"
	cohort.whole(cohort_size)
	cohort_size < k
	msg := sprintf(
		"per-study results need a cohort of at least %v patients; this cohort has %v (only aggregate results may leave)",
		[k, cohort_size],
	)
}

failures contains "input.result.min_cell must be a whole number of patients or null" if {
	result_given
	not min_cell == null
	not cohort.whole(min_cell)
}

failures contains msg if {
	cohort.whole(min_cell)
	min_cell < k
	msg := sprintf("a result cell of %v is below the minimum of %v", [min_cell, k])
}

failures contains "input.result.contains_pixels is missing or not true/false" if {
	result_given
	not is_boolean(contains_pixels)
}

failures contains msg if {
	contains_pixels == true
	not pixels_allowed
	msg := sprintf("the result contains pixel data, which dataset %q does not allow to leave", [decision.dataset])
}

failures contains "input.result.contains_pseudonyms is missing or not true/false" if {
	result_given
	not is_boolean(contains_pseudonyms)
}

failures contains msg if {
	contains_pseudonyms == true
	not pseudonyms_allowed
	msg := sprintf("the result contains pseudonyms, which dataset %q does not allow to leave", [decision.dataset])
}

failures contains "input.result.bytes is missing or not a whole number of bytes" if {
	result_given
	not cohort.whole(size_in_bytes)
}

failures contains msg if {
	decision.terms
	not max_bytes
	msg := sprintf("dataset %q has no max_result_bytes number in its egress settings", [decision.dataset])
}

failures contains msg if {
	cohort.whole(size_in_bytes)
	size_in_bytes > max_bytes
	msg := sprintf(
		"the result is %v bytes, above the maximum of %v bytes for dataset %q",
		[size_in_bytes, max_bytes, decision.dataset],
	)
}

# ---------------------------------------------------------------------------------------------
# What the dataset's egress terms oblige a job to do with its results (given with an allowed
# access decision)
# ---------------------------------------------------------------------------------------------

access_obligations contains "release aggregate results only" if {
	decision.terms
	not pixels_allowed
	not pseudonyms_allowed
}

access_obligations contains "release no pixel data" if {
	not pixels_allowed
	pseudonyms_allowed
}

access_obligations contains "release no pseudonyms" if {
	pixels_allowed
	not pseudonyms_allowed
}

access_obligations contains msg if {
	k
	msg := sprintf("suppress result cells below %v", [k])
}
