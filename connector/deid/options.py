"""The Annex E profile and its options: names, recipe files, and CID 7050 codes.

This module only names things; it never reads a file or touches a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProfileOption:
    name: str  # the CLI spelling
    recipe: str  # file under the recipes folder (connector.resources.shipped_deid_recipes_dir())
    code: str  # CID 7050 code value (coding scheme DCM)
    meaning: str


BASIC = ProfileOption("basic", "basic_profile.deid", "113100", "Basic Application Confidentiality Profile")
SAFE_ATTRIBUTES = "safe_attributes.deid"

# In the order they are applied: a later option overrides an earlier one where both name a tag.
OPTIONS: dict[str, ProfileOption] = {
    option.name: option
    for option in (
        ProfileOption(
            "clean-descriptors", "options/clean_descriptors.deid", "113105", "Clean Descriptors Option"
        ),
        ProfileOption(
            "clean-structured-content",
            "options/clean_structured_content.deid",
            "113104",
            "Clean Structured Content Option",
        ),
        ProfileOption("clean-graphics", "options/clean_graphics.deid", "113103", "Clean Graphics Option"),
        ProfileOption(
            "clean-pixel-data", "options/clean_pixel_data.deid", "113101", "Clean Pixel Data Option"
        ),
        ProfileOption(
            "retain-longitudinal-modified-dates",
            "options/retain_longitudinal_modified_dates.deid",
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
        ),
        ProfileOption(
            "retain-longitudinal-full-dates",
            "options/retain_longitudinal_full_dates.deid",
            "113106",
            "Retain Longitudinal Temporal Information Full Dates Option",
        ),
        ProfileOption(
            "retain-patient-characteristics",
            "options/retain_patient_characteristics.deid",
            "113108",
            "Retain Patient Characteristics Option",
        ),
        ProfileOption(
            "retain-device-identity",
            "options/retain_device_identity.deid",
            "113109",
            "Retain Device Identity Option",
        ),
        ProfileOption(
            "retain-institution-identity",
            "options/retain_institution_identity.deid",
            "113112",
            "Retain Institution Identity Option",
        ),
        ProfileOption("retain-uids", "options/retain_uids.deid", "113110", "Retain UIDs Option"),
        ProfileOption(
            "retain-safe-private", "options/retain_safe_private.deid", "113111", "Retain Safe Private Option"
        ),
    )
}

# What a research dataset gets unless the steward says otherwise: intervals between studies
# survive, descriptions and SR trees are kept after cleaning, burned-in text is cleaned.
DEFAULT_OPTIONS = (
    "clean-descriptors",
    "clean-structured-content",
    "clean-pixel-data",
    "retain-longitudinal-modified-dates",
    "retain-patient-characteristics",
)


class UnknownOption(ValueError):
    pass


# Options of which a dataset can have only one: naming one on the command line replaces the other
# where it came from the defaults (asking for full dates must not collide with the default's
# modified dates); naming both stays an error (resolve_options).
_EXCLUSIVE = (("retain-longitudinal-modified-dates", "retain-longitudinal-full-dates"),)


def requested_options(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The options a command line asks for: `-o X` adds X to DEFAULT_OPTIONS (as the README says);
    `none` drops the defaults, so `-o none` is the Basic Profile alone and `-o none -o X` is X alone.
    Names are not checked here (resolve_options does, with the list to choose from)."""
    if not names:
        return DEFAULT_OPTIONS
    named = tuple(dict.fromkeys(name for name in names if name != "none"))
    if "none" in names:
        return named
    dropped = {
        default
        for group in _EXCLUSIVE
        for default in group
        if default in DEFAULT_OPTIONS and any(other in named for other in group if other != default)
    }
    kept = tuple(name for name in DEFAULT_OPTIONS if name not in dropped)
    return kept + tuple(name for name in named if name not in kept)


def resolve_options(names: list[str] | tuple[str, ...]) -> tuple[ProfileOption, ...]:
    """Options in application order; conflicting date options are refused."""
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise UnknownOption(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    chosen = set(names)
    if {"retain-longitudinal-modified-dates", "retain-longitudinal-full-dates"} <= chosen:
        raise UnknownOption(
            "choose one of retain-longitudinal-modified-dates and retain-longitudinal-full-dates"
        )
    return tuple(option for name, option in OPTIONS.items() if name in chosen)
