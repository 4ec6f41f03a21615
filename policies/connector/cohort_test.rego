package connector.cohort_test

import data.connector.cohort

settings := {
	"defaults": {"legal_basis": "public-interest", "k": 10},
	"datasets": {
		"ds": {"k": 5},
		"consented": {"legal_basis": "consent"},
		"zero": {"k": 0},
		"fraction": {"k": 2.5},
		"text": {"k": "ten"},
	},
}

request(dataset, cohort) := {"action": "access", "dataset": dataset, "cohort": cohort}

deny_for(inp) := result if {
	result := cohort.deny with input as inp with data.connector.settings as settings
}

ok_for(inp) if {
	cohort.ok with input as inp with data.connector.settings as settings
}

reasons_for(inp) := result if {
	result := cohort.reasons with input as inp with data.connector.settings as settings
}

obligations_for(inp) := result if {
	result := cohort.obligations with input as inp with data.connector.settings as settings
}

# --- small-cell rule -------------------------------------------------------------------------

test_suppressed_shows_counts_of_at_least_k if {
	cohort.suppressed(42, 10) == 42
	cohort.suppressed(10, 10) == 10
}

test_suppressed_hides_counts_below_k if {
	cohort.suppressed(3, 10) == "<10"
	cohort.suppressed(0, 5) == "<5"
	cohort.suppressed(9, 10) == "<10"
}

test_catalog_counts_use_the_dataset_k if {
	cohort.catalog_count("ds", 4) == "<5" with data.connector.settings as settings
	cohort.catalog_count("ds", 5) == 5 with data.connector.settings as settings
	cohort.catalog_count("other", 9) == "<10" with data.connector.settings as settings
}

test_dataset_k if {
	cohort.dataset_k("ds") == 5 with data.connector.settings as settings
	cohort.dataset_k("other") == 10 with data.connector.settings as settings
	not cohort.dataset_k("zero") with data.connector.settings as settings
	not cohort.dataset_k("fraction") with data.connector.settings as settings
	not cohort.dataset_k("text") with data.connector.settings as settings
}

# --- access ----------------------------------------------------------------------------------

test_cohort_meeting_k if {
	inp := request("ds", {"size": 42, "excluded": 0})
	deny_for(inp) == set()
	ok_for(inp)
	reasons_for(inp) == {"cohort of 42 patients meets the minimum of 5"}
	obligations_for(inp) == set()
}

test_cohort_of_exactly_k if {
	ok_for(request("ds", {"size": 5}))
	reasons_for(request("ds", {"size": 5})) == {"cohort of 5 patients meets the minimum of 5"}
}

test_cohort_below_k if {
	inp := request("other", {"size": 3, "excluded": 0})
	deny_for(inp) == {"cohort of 3 patients is below the minimum of 10"}
	not ok_for(inp)
	reasons_for(inp) == set()
	deny_for(request("ds", {"size": 1})) == {"cohort of 1 patient is below the minimum of 5"}
}

test_excluded_patients_become_an_obligation if {
	obligations_for(request("ds", {"size": 42, "excluded": 3})) == {"exclude 3 patients (opt-out or withdrawn consent)"}
	obligations_for(request("ds", {"size": 42, "excluded": 1})) == {"exclude 1 patient (opt-out or withdrawn consent)"}
}

test_excluded_patients_under_consent if {
	inp := request("consented", {"size": 42, "excluded": 7})
	obligations_for(inp) == {"exclude 7 patients (no recorded consent, opt-out or withdrawn consent)"}
}

test_cohort_size_missing if {
	deny_for(request("ds", {})) == {"input.cohort.size is missing or not a number"}
	deny_for({"action": "access", "dataset": "ds"}) == {"input.cohort.size is missing or not a number"}
	deny_for(request("ds", {"size": "42"})) == {"input.cohort.size is missing or not a number"}
	not ok_for(request("ds", {}))
}

test_cohort_size_not_whole if {
	deny_for(request("ds", {"size": 42.5})) == {"input.cohort.size must be a whole number of patients, got 42.5"}
	deny_for(request("ds", {"size": -1})) == {"input.cohort.size must be a whole number of patients, got -1"}
	not ok_for(request("ds", {"size": 42.5}))
}

test_excluded_not_whole if {
	deny_for(request("ds", {"size": 42, "excluded": "3"})) == {"input.cohort.excluded must be a whole number of patients, got 3"}
	deny_for(request("ds", {"size": 42, "excluded": -2})) == {"input.cohort.excluded must be a whole number of patients, got -2"}
	not ok_for(request("ds", {"size": 42, "excluded": -2}))
	obligations_for(request("ds", {"size": 42, "excluded": -2})) == set()
}

test_dataset_without_a_valid_k if {
	deny_for(request("zero", {"size": 42})) == {`dataset "zero" has no valid minimum cohort size k in the settings (a whole number of at least 1, got 0)`}
	deny_for(request("text", {"size": 42})) == {`dataset "text" has no valid minimum cohort size k in the settings (a whole number of at least 1, got ten)`}
	not ok_for(request("zero", {"size": 42}))
}

test_non_object_input if {
	deny_for(42) == {"input.cohort.size is missing or not a number"}
	not ok_for(42)
}
