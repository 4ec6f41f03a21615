"""A compiled de-identification plan: for every tag, the one operation to apply.

Plans are plain data built once per run from the recipe files (see recipes.py) and shipped to
worker processes; applying them is transform.py's job. A tag that no recipe names is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Op(StrEnum):
    KEEP = "keep"  # K (a sequence is entered and its items de-identified)
    REMOVE = "remove"  # X
    BLANK = "blank"  # Z
    DUMMY = "dummy"  # D
    CLEAN = "clean"  # C
    UID = "uid"  # U
    RECURSE = "recurse"  # U* on reference sequences: keep, remap the UIDs inside
    PSEUDONYM = "pseudonym"  # PatientID / PatientName
    SHIFT_DATE = "shift_date"  # the per-patient date offset


@dataclass(frozen=True)
class Condition:
    """One test of a pixel rule: equals, notequals, contains, notcontains, missing, present or empty."""

    op: str
    keyword: str
    value: str | None


@dataclass(frozen=True)
class PixelRule:
    label: str
    conditions: tuple[Condition, ...]
    boxes: tuple[tuple[int, int, int, int], ...]  # xmin, ymin, xmax, ymax (end exclusive)


@dataclass(frozen=True)
class Plan:
    profile: str
    options: tuple[str, ...]
    by_tag: dict[int, Op]
    patterns: tuple[tuple[re.Pattern[str], Op], ...] = ()
    safe_private: frozenset[tuple[str, int, int]] = frozenset()  # (creator, group, element low byte)
    pixel_rules: tuple[PixelRule, ...] = ()
    sources: dict[int, str] = field(default_factory=dict)  # tag -> recipe file that decided it
    # Free-text descriptors (the Clean Descriptors rows): their words are not identifiers themselves.
    descriptors: frozenset[int] = frozenset()

    def op_for(self, tag: int) -> Op:
        op = self.by_tag.get(tag)
        if op is not None:
            return op
        if self.patterns:
            text = f"{tag:08X}"
            for pattern, pattern_op in self.patterns:
                if pattern.match(text):
                    return pattern_op
        return Op.REMOVE

    @property
    def cleans_pixels(self) -> bool:
        return "clean-pixel-data" in self.options

    @property
    def shifts_dates(self) -> bool:
        return "retain-longitudinal-modified-dates" in self.options
