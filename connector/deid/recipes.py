"""Load deid recipe files with the deid library and compile them once into a Plan.

The files are parsed by deid's own parser (always from an explicit path: with none, deid would
pick up any ./dicom/deid* file as its recipe). The compiler understands the subset of deid's
language our recipes use and refuses anything else with a message naming the file and line,
so a malformed or unsupported recipe can never silently weaken de-identification.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydicom.datadict import tag_for_keyword

from connector.deid.options import BASIC, SAFE_ATTRIBUTES, ProfileOption, resolve_options
from connector.deid.plan import Condition, Op, PixelRule, Plan
from connector.resources import shipped_deid_recipes_dir

_FUNCS = {
    "func:dummy": Op.DUMMY,
    "func:clean": Op.CLEAN,
    "func:uid": Op.UID,
    "func:recurse": Op.RECURSE,
    "func:pseudonym": Op.PSEUDONYM,
    "func:shift_date": Op.SHIFT_DATE,
}
_SIMPLE = {"REMOVE": Op.REMOVE, "BLANK": Op.BLANK, "KEEP": Op.KEEP}
_HEX_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_CONDITIONS = {"equals", "notequals", "contains", "notcontains", "missing", "present", "empty"}


class RecipeError(ValueError):
    """A recipe file is missing, unreadable or uses something the compiler does not support."""


def _quiet_deid() -> None:
    # deid prints every parsed line at DEBUG level through its own logger.
    from deid.logger import bot

    bot.level = 1  # errors only
    logging.getLogger("deid").setLevel(logging.ERROR)


def _parse(path: Path) -> Any:
    from deid.config import DeidRecipe

    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    _quiet_deid()
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.lstrip().startswith("FORMAT dicom"):
        raise RecipeError(f"recipe {path}: the first line must be 'FORMAT dicom'")
    try:
        return DeidRecipe(deid=str(path), base=False)
    except SystemExit as exc:  # deid's parser exits on a syntax error
        raise RecipeError(f"recipe {path} could not be parsed by deid (exit {exc.code})") from None
    except Exception as exc:
        raise RecipeError(f"recipe {path} could not be parsed by deid: {exc}") from None


def _tag_of(field: str, path: Path) -> int:
    match = _HEX_TAG.match(field)
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(field)
    if tag is None:
        raise RecipeError(f"recipe {path}: unknown attribute {field!r}")
    return int(tag)


def _op_of(action: dict[str, Any], path: Path) -> Op:
    name = action["action"]
    if name in _SIMPLE:
        return _SIMPLE[name]
    if name == "REPLACE" and action.get("value") in _FUNCS:
        return _FUNCS[action["value"]]
    raise RecipeError(
        f"recipe {path}: unsupported action {name} {action.get('field')} {action.get('value', '')}".rstrip()
    )


def _conditions(raw: list[dict[str, Any]], label: str, path: Path) -> tuple[Condition, ...]:
    conditions = []
    for index, item in enumerate(raw):
        if item.get("InnerOperators") or (index and item.get("operator") != "and"):
            raise RecipeError(f"recipe {path}, rule {label!r}: only conditions joined by '+' are supported")
        op, keyword = item["action"][0], item["field"][0]
        if op not in _CONDITIONS:
            raise RecipeError(f"recipe {path}, rule {label!r}: unknown condition {op!r}")
        if tag_for_keyword(keyword) is None:
            raise RecipeError(f"recipe {path}, rule {label!r}: unknown attribute {keyword!r}")
        values = item.get("value") or [None]
        conditions.append(Condition(op, keyword, values[0]))
    return tuple(conditions)


def _boxes(raw: list[Any], label: str, path: Path) -> tuple[tuple[int, int, int, int], ...]:
    boxes = []
    for _, text in raw:
        try:
            xmin, ymin, xmax, ymax = (int(part) for part in str(text).split(","))
        except ValueError:
            raise RecipeError(
                f"recipe {path}, rule {label!r}: coordinates must be xmin,ymin,xmax,ymax"
            ) from None
        if xmin < 0 or ymin < 0 or xmax <= xmin or ymax <= ymin:
            raise RecipeError(f"recipe {path}, rule {label!r}: empty or negative box {text}")
        boxes.append((xmin, ymin, xmax, ymax))
    if not boxes:
        raise RecipeError(f"recipe {path}, rule {label!r} has no coordinates")
    return tuple(boxes)


def compile_recipes(
    options: list[str] | tuple[str, ...] = (),
    recipes_dir: Path | None = None,
    extra: tuple[Path, ...] = (),
) -> Plan:
    """The plan for the basic profile plus `options` (and any `extra` site recipes, applied last).

    `recipes_dir` is the folder of the profile's recipe files (the `deid_recipes_dir` setting);
    None means the recipes shipped with the connector."""
    chosen = resolve_options(list(options))
    if recipes_dir is None:
        recipes_dir = shipped_deid_recipes_dir()
    files: list[tuple[Path, ProfileOption | None]] = [
        (recipes_dir / SAFE_ATTRIBUTES, None),
        (recipes_dir / BASIC.recipe, BASIC),
        *[(recipes_dir / option.recipe, option) for option in chosen],
        *[(path, None) for path in extra],
    ]
    by_tag: dict[int, Op] = {}
    sources: dict[int, str] = {}
    patterns: dict[str, Op] = {}
    safe_private: set[tuple[str, int, int]] = set()
    rules: list[PixelRule] = []
    for path, _option in files:
        recipe = _parse(path)
        for action in recipe.get_actions() or []:
            field = action["field"]
            op = _op_of(action, path)
            if field == "private:*":
                continue  # private attributes are removed unless listed as safe (below)
            if field.startswith("private:"):
                try:
                    creator, group, element = field[len("private:") :].rsplit(":", 2)
                    safe_private.add((unquote(creator), int(group, 16), int(element, 16)))
                except ValueError:
                    raise RecipeError(
                        f"recipe {path}: private attributes are private:CREATOR:GGGG:EE"
                    ) from None
                continue
            if field.startswith("contains:"):
                try:
                    patterns[field[len("contains:") :]] = op
                except re.error as exc:
                    raise RecipeError(f"recipe {path}: bad pattern {field}: {exc}") from None
                continue
            tag = _tag_of(field, path)
            by_tag[tag] = op
            sources[tag] = path.name
        for group in (recipe.get_filters() or {}).values():
            for rule in group:
                label = rule.get("name", "").removeprefix("LABEL ").strip() or "unnamed rule"
                rules.append(
                    PixelRule(
                        label,
                        _conditions(rule.get("filters", []), label, path),
                        _boxes(rule.get("coordinates", []), label, path),
                    )
                )
    descriptors = frozenset(
        _tag_of(action["field"], recipes_dir / "options/clean_descriptors.deid")
        for action in _parse(recipes_dir / "options/clean_descriptors.deid").get_actions() or []
    )
    try:
        compiled = tuple((re.compile(pattern), op) for pattern, op in patterns.items())
    except re.error as exc:
        raise RecipeError(f"a recipe pattern is not a valid regular expression: {exc}") from None
    return Plan(
        profile=BASIC.name,
        options=tuple(option.name for option in chosen),
        by_tag=by_tag,
        patterns=compiled,
        safe_private=frozenset(safe_private)
        if "retain-safe-private" in {o.name for o in chosen}
        else frozenset(),
        pixel_rules=tuple(rules) if any(o.name == "clean-pixel-data" for o in chosen) else (),
        sources=sources,
        descriptors=descriptors,
    )
