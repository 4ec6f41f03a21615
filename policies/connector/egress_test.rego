package connector.egress_test

import data.connector.egress

settings := {
	"defaults": {"k": 10, "egress": {
		"allow_pixels": false, "allow_pseudonyms": false, "max_result_bytes": 1000,
		"per_study_decimals": 2, "max_labels": 16, "max_released_numbers": 100,
	}},
	"datasets": {
		"ds": {"k": 5},
		"pixels": {"egress": {"allow_pixels": true}},
		"pseudonyms": {"egress": {"allow_pseudonyms": true}},
		"open": {"egress": {"allow_pixels": true, "allow_pseudonyms": true}},
		"no-k": {"k": 0},
		"no-max": {"egress": {"max_result_bytes": "10 MB"}},
		"no-caps": {"egress": {"max_labels": null, "per_study_decimals": -1, "max_released_numbers": "lots"}},
	},
}

result := {
	"kind": "aggregate", "cohort_size": 42, "min_cell": 12, "contains_pixels": false, "contains_pseudonyms": false,
	"bytes": 512, "labels": 2, "decimals": null, "studies": 42, "numbers": 5,
}

per_study := {"kind": "per-study", "min_cell": null, "decimals": 2, "numbers": 20}

release(dataset, changes) := {
	"action": "release", "dataset": dataset, "result": object.union(result, changes),
	"budget": {"used": 0},
}

with_budget(inp, used) := object.union(inp, {"budget": {"used": used}})

deny_for(inp) := out if {
	out := egress.deny with input as inp with data.connector.settings as settings
}

ok_for(inp) if {
	egress.ok with input as inp with data.connector.settings as settings
}

reasons_for(inp) := out if {
	out := egress.reasons with input as inp with data.connector.settings as settings
}

obligations_for(inp) := out if {
	out := egress.obligations with input as inp with data.connector.settings as settings
}

access_obligations_for(dataset) := out if {
	out := egress.access_obligations with input as {"action": "access", "dataset": dataset}
		with data.connector.settings as settings
}

# --- allowed releases ------------------------------------------------------------------------

test_aggregate_result_allowed if {
	inp := release("ds", {})
	deny_for(inp) == set()
	ok_for(inp)
	reasons_for(inp) == {
		`aggregate result of a cohort of 42 patients may leave dataset "ds"`,
		"every result cell counts at least 5 patients (smallest: 12)",
		"the result is 512 bytes, within the maximum of 1000",
		`the result releases 5 numbers; the team's budget for dataset "ds": 0 of 100 used before it`,
	}
	obligations_for(inp) == set()
}

test_result_without_cells if {
	inp := release("ds", {"min_cell": null})
	ok_for(inp)
	reasons_for(inp) == {
		`aggregate result of a cohort of 42 patients may leave dataset "ds"`,
		"the result is 512 bytes, within the maximum of 1000",
		`the result releases 5 numbers; the team's budget for dataset "ds": 0 of 100 used before it`,
	}
}

test_per_study_result_with_a_cohort_of_k if {
	ok_for(release("ds", object.union(per_study, {"cohort_size": 5})))
	ok_for(release("other", object.union(per_study, {"cohort_size": 10, "min_cell": 10})))
}

# An aggregate of fewer than k patients is their data: k holds for every release.
test_aggregate_of_a_cohort_below_k_denied if {
	inp := release("ds", {"cohort_size": 1, "min_cell": null})
	deny_for(inp) == {"aggregate results need a runnable cohort of at least 5 patients; this cohort has 1"}
	not ok_for(inp)
	not ok_for(release("other", {"cohort_size": 4, "min_cell": null}))
}

test_result_of_exactly_the_maximum_size if {
	ok_for(release("ds", {"bytes": 1000}))
}

# --- small cells and small cohorts -----------------------------------------------------------

test_small_cell_denied_with_suppression_obligation if {
	inp := release("other", {"min_cell": 3})
	deny_for(inp) == {"a result cell of 3 is below the minimum of 10"}
	not ok_for(inp)
	obligations_for(inp) == {"suppress cells below 10"}
}

test_per_study_result_of_a_small_cohort_denied if {
	inp := release("other", object.union(per_study, {"cohort_size": 8}))
	deny_for(inp) == {"per-study results need a runnable cohort of at least 10 patients; this cohort has 8"}
	not ok_for(inp)
}

# --- the bounded release channel: labels, decimals, budget -----------------------------------

test_too_many_labels_denied if {
	inp := release("ds", {"labels": 256})
	deny_for(inp) == {"the result has 256 labels, above the maximum of 16"}
	not ok_for(inp)
	obligations_for(inp) == {"release at most 16 labels"}
	ok_for(release("ds", {"labels": 16}))
}

test_per_study_values_above_the_decimals_cap_denied if {
	inp := release("ds", object.union(per_study, {"decimals": 6}))
	deny_for(inp) == {"per-study values have 6 decimals, above the maximum of 2"}
	not ok_for(inp)
	obligations_for(inp) == {"round per-study values to 2 decimals"}
	ok_for(release("ds", object.union(per_study, {"decimals": 0})))
}

test_decimals_must_match_the_kind if {
	deny_for(release("ds", {"decimals": 2})) == {"input.result.decimals must be null for an aggregate result"}
	deny_for(release("ds", object.union(per_study, {"decimals": null}))) == {"input.result.decimals must be a whole number of decimals for a per-study result"}
	deny_for(release("ds", object.union(per_study, {"decimals": 1.5}))) == {"input.result.decimals must be a whole number of decimals for a per-study result"}
}

test_release_budget_per_team_and_dataset if {
	ok_for(with_budget(release("ds", {"numbers": 40}), 60))
	inp := with_budget(release("ds", {"numbers": 41}), 60)
	deny_for(inp) == {`the result would release 41 numbers; the team has used 60 of its budget of 100 for dataset "ds"`}
	not ok_for(inp)
	egress.budget == {"used": 60, "limit": 100} with input as inp with data.connector.settings as settings
}

test_budget_and_numbers_must_be_given if {
	deny_for({"action": "release", "dataset": "ds", "result": result}) == {"input.budget.used is missing or not a whole number"}
	deny_for(with_budget(release("ds", {}), -3)) == {"input.budget.used is missing or not a whole number"}
	deny_for(release("ds", {"numbers": "5"})) == {"input.result.numbers is missing or not a whole number"}
	deny_for(release("ds", {"labels": 2.5})) == {"input.result.labels is missing or not a whole number of labels"}
}

test_dataset_without_valid_channel_caps if {
	deny_for(release("no-caps", {})) == {
		`dataset "no-caps" has no max_labels whole number in its egress settings`,
		`dataset "no-caps" has no per_study_decimals whole number in its egress settings`,
		`dataset "no-caps" has no max_released_numbers whole number in its egress settings`,
	}
}

test_release_terms_for_the_connector if {
	terms := egress.release_terms with input as {"action": "release", "dataset": "ds"}
		with data.connector.settings as settings
	terms == {"max_labels": 16, "per_study_decimals": 2, "max_released_numbers": 100}
}

# --- pixels, pseudonyms, size ----------------------------------------------------------------

test_pixels_denied_unless_the_dataset_allows_them if {
	inp := release("ds", {"contains_pixels": true})
	deny_for(inp) == {`the result contains pixel data, which dataset "ds" does not allow to leave`}
	not ok_for(inp)
	ok_for(release("pixels", {"contains_pixels": true}))
	not ok_for(release("pixels", {"contains_pseudonyms": true}))
}

test_pseudonyms_denied_unless_the_dataset_allows_them if {
	inp := release("ds", {"contains_pseudonyms": true})
	deny_for(inp) == {`the result contains pseudonyms, which dataset "ds" does not allow to leave`}
	not ok_for(inp)
	ok_for(release("pseudonyms", {"contains_pseudonyms": true}))
	ok_for(release("open", {"contains_pixels": true, "contains_pseudonyms": true}))
}

test_result_too_big if {
	inp := release("ds", {"bytes": 2000})
	deny_for(inp) == {`the result is 2000 bytes, above the maximum of 1000 bytes for dataset "ds"`}
	not ok_for(inp)
}

test_dataset_without_a_maximum_size if {
	inp := release("no-max", {})
	deny_for(inp) == {`dataset "no-max" has no max_result_bytes number in its egress settings`}
	not ok_for(inp)
}

test_dataset_without_a_valid_k if {
	inp := release("no-k", {})
	deny_for(inp) == {`dataset "no-k" has no valid minimum cohort size k in the settings`}
	not ok_for(inp)
}

# --- malformed results -----------------------------------------------------------------------

test_result_missing if {
	deny_for({"action": "release", "dataset": "ds", "budget": {"used": 0}}) == {"input.result is missing or not an object"}
	deny_for({"action": "release", "dataset": "ds", "result": "all of it", "budget": {"used": 0}}) == {"input.result is missing or not an object"}
	not ok_for({"action": "release", "dataset": "ds"})
}

test_result_of_unknown_kind if {
	deny_for(release("ds", {"kind": "images"})) == {`input.result.kind must be "aggregate" or "per-study", got "images"`}
	inp := {"action": "release", "dataset": "ds", "result": object.remove(result, ["kind"]), "budget": {"used": 0}}
	deny_for(inp) == {`input.result.kind must be "aggregate" or "per-study", got null`}
	not ok_for(inp)
}

test_result_fields_missing if {
	deny_for({"action": "release", "dataset": "ds", "result": {}, "budget": {"used": 0}}) == {
		`input.result.kind must be "aggregate" or "per-study", got null`,
		"input.result.cohort_size is missing or not a whole number of patients",
		"input.result.min_cell must be a whole number of patients or null",
		"input.result.contains_pixels is missing or not true/false",
		"input.result.contains_pseudonyms is missing or not true/false",
		"input.result.bytes is missing or not a whole number of bytes",
		"input.result.labels is missing or not a whole number of labels",
		"input.result.numbers is missing or not a whole number",
	}
	not ok_for({"action": "release", "dataset": "ds", "result": {}})
}

test_result_fields_of_the_wrong_type if {
	deny_for(release("ds", {"cohort_size": "42"})) == {"input.result.cohort_size is missing or not a whole number of patients"}
	deny_for(release("ds", {"min_cell": "7"})) == {"input.result.min_cell must be a whole number of patients or null"}
	deny_for(release("ds", {"min_cell": 7.5})) == {"input.result.min_cell must be a whole number of patients or null"}
	deny_for(release("ds", {"contains_pixels": "no"})) == {"input.result.contains_pixels is missing or not true/false"}
	deny_for(release("ds", {"contains_pseudonyms": 0})) == {"input.result.contains_pseudonyms is missing or not true/false"}
	deny_for(release("ds", {"bytes": -1})) == {"input.result.bytes is missing or not a whole number of bytes"}
	not ok_for(release("ds", {"contains_pixels": "no"}))
	not ok_for(release("ds", {"contains_pseudonyms": 0}))
}

test_non_object_input if {
	deny_for("release") == {"input.result is missing or not an object", "input.budget.used is missing or not a whole number"}
	not ok_for("release")
}

# --- what access obliges ---------------------------------------------------------------------

test_access_obligations_by_egress_terms if {
	access_obligations_for("ds") == {"release aggregate results only", "suppress result cells below 5"}
	access_obligations_for("pixels") == {"release no pseudonyms", "suppress result cells below 10"}
	access_obligations_for("pseudonyms") == {"release no pixel data", "suppress result cells below 10"}
	access_obligations_for("open") == {"suppress result cells below 10"}
}

test_no_access_obligations_without_dataset_terms if {
	access_obligations_for(7) == set()
}
