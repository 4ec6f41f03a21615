# METADATA
# title: Egress
# description: >-
#   What a job may release from the connector. Every result, aggregates included, needs a
#   runnable cohort (patients whose studies the model could read) of at least k patients; no
#   reported cell may count fewer than k patients; pixel data and pseudonyms leave only when the
#   dataset's "egress" settings allow them; a result may not be larger than max_result_bytes.
#   The release channel is bounded: at most max_labels labels, per-study values at most
#   per_study_decimals decimals, and a budget of max_released_numbers numbers per team and
#   dataset (input.budget.used is what the team has already been released). These caps bound a
#   covert channel through model outputs; they do not close it.
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
	labels_ok
	decimals_ok
	budget_ok
}

k := cohort.k

# The dataset's egress terms: only an explicit true allows pixels or pseudonyms to leave.
egress_terms := decision.terms.egress

pixels_allowed if egress_terms.allow_pixels == true

pseudonyms_allowed if egress_terms.allow_pseudonyms == true

max_bytes := egress_terms.max_result_bytes if is_number(egress_terms.max_result_bytes)

# The bounded release channel (whole numbers in the settings, else nothing is released).
max_labels := egress_terms.max_labels if cohort.whole(egress_terms.max_labels)

max_decimals := egress_terms.per_study_decimals if cohort.whole(egress_terms.per_study_decimals)

budget_limit := egress_terms.max_released_numbers if cohort.whole(egress_terms.max_released_numbers)

# What the connector applies when it builds a result (it quantises to these before asking).
release_terms := {
	"max_labels": max_labels,
	"per_study_decimals": max_decimals,
	"max_released_numbers": budget_limit,
}

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

label_count := object.get(result, "labels", null)

decimals := object.get(result, "decimals", "missing")

numbers := object.get(result, "numbers", null)

# What this team has already been released from this dataset (kept by the connector).
default budget_given := {}

budget_given := input.budget if is_object(input.budget)

budget_used := object.get(budget_given, "used", null)

budget := {"used": budget_used, "limit": budget_limit}

# Every kind of result, aggregates included: an aggregate of one patient is that patient's data.
size_ok if {
	kind in kinds
	cohort_size >= k
}

labels_ok if {
	cohort.whole(label_count)
	label_count <= max_labels
}

# Per-study values carry at most max_decimals decimals; a result with no per-study values says null.
decimals_ok if {
	kind == "aggregate"
	decimals == null
}

decimals_ok if {
	kind == "per-study"
	cohort.whole(decimals)
	decimals <= max_decimals
}

budget_ok if {
	cohort.whole(numbers)
	cohort.whole(budget_used)
	budget_used + numbers <= budget_limit
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

reasons contains msg if {
	ok
	msg := sprintf(
		"the result releases %v numbers; the team's budget for dataset %q: %v of %v used before it",
		[numbers, input.dataset, budget_used, budget_limit],
	)
}

# Obligations of a release, given with a denial too: what would make the result releasable.
obligations contains msg if {
	cohort.whole(min_cell)
	min_cell < k
	msg := sprintf("suppress cells below %v", [k])
}

obligations contains msg if {
	cohort.whole(label_count)
	label_count > max_labels
	msg := sprintf("release at most %v labels", [max_labels])
}

obligations contains msg if {
	kind == "per-study"
	cohort.whole(decimals)
	decimals > max_decimals
	msg := sprintf("round per-study values to %v decimals", [max_decimals])
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
	kind in kinds
	cohort.whole(cohort_size)
	cohort_size < k
	msg := sprintf(
		"%s results need a runnable cohort of at least %v patients; this cohort has %v",
		[kind, k, cohort_size],
	)
}

failures contains "input.result.labels is missing or not a whole number of labels" if {
	result_given
	not cohort.whole(label_count)
}

failures contains msg if {
	decision.terms
	not max_labels
	msg := sprintf("dataset %q has no max_labels whole number in its egress settings", [decision.dataset])
}

failures contains msg if {
	cohort.whole(label_count)
	label_count > max_labels
	msg := sprintf("the result has %v labels, above the maximum of %v", [label_count, max_labels])
}

failures contains "input.result.decimals must be null for an aggregate result" if {
	kind == "aggregate"
	decimals != null
}

failures contains "input.result.decimals must be a whole number of decimals for a per-study result" if {
	kind == "per-study"
	not cohort.whole(decimals)
}

failures contains msg if {
	decision.terms
	not max_decimals
	msg := sprintf("dataset %q has no per_study_decimals whole number in its egress settings", [decision.dataset])
}

failures contains msg if {
	kind == "per-study"
	cohort.whole(decimals)
	decimals > max_decimals
	msg := sprintf("per-study values have %v decimals, above the maximum of %v", [decimals, max_decimals])
}

failures contains "input.result.numbers is missing or not a whole number" if {
	result_given
	not cohort.whole(numbers)
}

failures contains "input.budget.used is missing or not a whole number" if {
	not cohort.whole(budget_used)
}

failures contains msg if {
	decision.terms
	not budget_limit
	msg := sprintf("dataset %q has no max_released_numbers whole number in its egress settings", [decision.dataset])
}

failures contains msg if {
	cohort.whole(numbers)
	cohort.whole(budget_used)
	budget_used + numbers > budget_limit
	msg := sprintf(
		"the result would release %v numbers; the team has used %v of its budget of %v for dataset %q",
		[numbers, budget_used, budget_limit, decision.dataset],
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
