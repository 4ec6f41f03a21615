"""Apply a compiled Plan to one dataset, recursively, and remember what was identifying.

Every element, in every sequence item at any depth (SR content trees included), gets exactly
the plan's operation; private elements are removed unless on the safe list. The original values
of everything removed, blanked or replaced are collected as the instance's identifying values,
for cleaning free text and for leak verification. This module never writes files.

It is the per-element cost of a run, so it works on the raw elements as read: the plan's decision
for each tag and VR is worked out once per plan (`PlanTable`), replacements are built as raw
bytes, values are read without decoding elements in place, sequences that go away are read
straight from their bytes, and cleaned text repeated across a series is cleaned once. Each of
these gives the bytes the decoded path gives; tests/test_deid_fast_paths.py holds them to it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, cast

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from connector.deid.keys import DatasetKeys
from connector.deid.options import SAFE_ATTRIBUTES
from connector.deid.plan import Op, Plan
from connector.deid.verify import STRONG_IDENTIFIERS
from connector.dicom_decode import nested_raw_items, peek, raw_items, sequence_value
from connector.dicom_encode import encoded_value

TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
DUMMY_TEXT = "ANONYMIZED"
_DUMMIES = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "",
}
_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "PN": 64, "SH": 16, "UC": 1024}
_MIN_IDENTIFYING = 3  # shorter values (sex, a digit) are removed but too common to scan for
_MIN_NAME_PART = 4
_PRINTABLE = re.compile(rb"^[\x20-\x7e\x80-\xff\t\r\n]+$")
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})(.*)$")
_SCRUB_PATTERNS = (
    re.compile(r"\b\d{4}[-./]\d{1,2}[-./]\d{1,2}\b"),  # ISO-like dates
    re.compile(r"\b\d{1,2}[-./]\d{1,2}[-./]\d{2,4}\b"),  # European dates
    re.compile(r"\b(19|20)\d{6}\b"),  # DICOM DA
    re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),  # e-mail
    re.compile(r"\+?\d[\d ()/-]{7,}\d"),  # phone numbers and long identifiers
)
REDACTED = "***"


# What apply_plan does with one standard element, by step.
_SEQUENCE = 0  # a sequence: entered, or removed or emptied with its values remembered
_KEEP = 1  # kept, nothing to note
_RETAIN = 2  # kept on purpose by an option: its values are no leak
_KEEP_SAFE = 3  # kept as merely safe: its raw value stays a suspect for verification
_CLEAN = 4
_REMOVE = 5
_BLANK = 6
_DUMMY = 7
_UID = 8
_PSEUDONYM = 9
_SHIFT = 10
_REPLACING = {Op.REMOVE: _REMOVE, Op.BLANK: _BLANK, Op.DUMMY: _DUMMY, Op.UID: _UID}
_REPLACING |= {Op.PSEUDONYM: _PSEUDONYM, Op.SHIFT_DATE: _SHIFT, Op.CLEAN: _CLEAN}


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan's treatment of a standard element of one tag and VR, worked out once per plan."""

    op: Op
    vr: str  # the element's VR, or the dictionary's where the element has none or UN
    step: int
    action: tuple[str, str]  # the report's (attribute, operation)
    remembers: bool  # whether its original values are identifying (see _remember)
    strong: bool  # whether they name or number a person (verify.STRONG_IDENTIFIERS)
    keyword: str


class PlanTable:
    """Decisions and operations of one plan by tag, filled as tags are met (plans are immutable)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.decisions: dict[tuple[int, str | None], Decision] = {}
        self.ops: dict[int, Op] = {}

    def op(self, tag: int) -> Op:
        op = self.ops.get(tag)
        if op is None:
            op = self.ops[tag] = self.plan.op_for(tag)
        return op

    def decide(self, tag: int, element_vr: str | None) -> Decision:
        """The decision for a standard (even group) tag whose element carries `element_vr`."""
        plan = self.plan
        op = self.op(tag)
        vr = str(element_vr) if element_vr and element_vr != "UN" else _dictionary_vr(tag)
        keyword = _keyword(tag)
        if vr == "SQ":
            step = _SEQUENCE
        elif op is Op.KEEP or op is Op.RECURSE:
            if vr not in TEXT_VRS:
                step = _KEEP
            else:
                step = _RETAIN if plan.sources.get(tag) != SAFE_ATTRIBUTES else _KEEP_SAFE
        elif op is Op.SHIFT_DATE and vr not in {"DA", "DT"} and vr in TEXT_VRS:
            # Times and UTC offsets stay as they are: without the real date they identify no one.
            step = _RETAIN
        else:
            step = _REPLACING[op]
        decision = Decision(
            op=op,
            vr=vr,
            step=step,
            action=(keyword, op.value),
            remembers=vr not in FREE_TEXT_VRS and tag not in plan.descriptors,
            strong=keyword in STRONG_IDENTIFIERS,
            keyword=keyword,
        )
        self.decisions[(tag, element_vr)] = decision
        return decision


_TABLES: dict[int, PlanTable] = {}


def plan_table(plan: Plan) -> PlanTable:
    """The table of `plan` (one per plan and process: a run's workers each fill their own)."""
    table = _TABLES.get(id(plan))
    if table is None or table.plan is not plan:
        if len(_TABLES) >= 16:
            _TABLES.clear()  # a long-lived process that compiles many plans keeps only recent ones
        table = _TABLES[id(plan)] = PlanTable(plan)
    return table


@dataclass
class InstanceWork:
    """Per-instance state while the plan is applied."""

    plan: Plan
    keys: DatasetKeys
    pseudonym: str
    date_offset: int
    encodings: list[str]
    identifying: dict[bytes, str] = field(default_factory=dict)  # value -> attribute it came from
    kept: set[bytes] = field(default_factory=set)  # values an option retains on purpose
    safe_raw: list[bytes] = field(default_factory=list)  # raw values of merely safe attributes
    to_clean: list[tuple[Dataset, int]] = field(default_factory=list)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    table: PlanTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.table = plan_table(self.plan)


def _vr_of(item: object, tag: int) -> str:
    vr = getattr(item, "VR", None)
    if vr and (vr != "UN" or (tag >> 16) & 1):
        return str(vr)
    return _dictionary_vr(tag)


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _raw_bytes(ds: Dataset, tag: int, item: DataElement | RawDataElement | None = None) -> bytes | None:
    """The element's value as stored (raw bytes), or re-encoded when already converted."""
    item = item if item is not None else ds.get_item(tag)
    if isinstance(item, RawDataElement):
        return item.value if isinstance(item.value, bytes) else None
    value = item.value
    if isinstance(value, bytes):
        return value
    if value is None or isinstance(value, Sequence):
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple | MultiValue) else str(value)
    return text.encode("utf-8", "replace")


def _values(raw: bytes | None, vr: str) -> tuple[bytes, ...]:
    """The searchable text values of an element (names also by component)."""
    if not raw or vr in NUMBER_VRS or len(raw) > 4096:
        return ()
    # Short values are cached: the files of a series repeat most of them (names, dates, codes).
    return _cached_values_of(raw, vr) if len(raw) <= 256 else _values_of(raw, vr)


def _values_of(raw: bytes, vr: str) -> tuple[bytes, ...]:
    if vr in BINARY_VRS and not _PRINTABLE.match(raw):
        return ()
    found = []
    for value in raw.split(b"\\"):
        value = value.strip(b" \x00")
        if len(value) >= _MIN_IDENTIFYING and not _SHORT_NUMBER.match(value):
            found.append(value)
        if vr == "PN" or vr in BINARY_VRS:
            # Family, given and middle names stand alone in free text and banners; prefixes and
            # suffixes (Dr., Prof.) and names shorter than 4 letters would match innocent words.
            for group in value.split(b"="):
                found.extend(
                    part.strip() for part in group.split(b"^")[:3] if len(part.strip()) >= _MIN_NAME_PART
                )
    return tuple(found)


_cached_values_of = lru_cache(maxsize=16384)(_values_of)

# Prose, code strings (enumerated terms such as TEXT or CHEST) and decimal numbers: never
# identifiers to hunt for elsewhere (a slice spacing of 2.5 is no leak in a window width).
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "CS", "AS", "DS", "IS"})
# Short numbers (a private "0.5", an "100") match innocent values; identifiers are longer.
_SHORT_NUMBER = re.compile(rb"^[-+0-9.eE ]{1,5}$")


def _remember(work: InstanceWork, raw: bytes | None, vr: str, tag: int) -> None:
    """Note an original value as identifying: names, IDs, dates, UIDs, addresses, not prose.

    Free text and descriptors are removed or cleaned, but their words are no identifiers to hunt
    for elsewhere (a body part named in a removed description is no leak in Body Part Examined).
    """
    if vr in FREE_TEXT_VRS or tag in work.plan.descriptors:
        return
    _note(work, raw, vr, _keyword(tag), _keyword(tag) in STRONG_IDENTIFIERS)


def _note(work: InstanceWork, raw: bytes | None, vr: str, keyword: str, strong: bool) -> None:
    identifying = work.identifying
    for value in _values(raw, vr):
        # Remember the strongest origin: a name seen in a private tag and in Patient's Name is a name.
        if strong or value not in identifying:
            identifying[value] = keyword


def _remember_sequence(work: InstanceWork, ds: Dataset, tag: int) -> None:
    """Note the identifying values inside a sequence element that goes away.

    A sequence still undecoded is read straight from its bytes, without building its items as
    datasets; the same values are noted in the same order as `_remember_tree` would note them.
    """
    items = raw_items(ds, tag)
    notes: list[tuple[bytes | None, str, int]] = []
    if items is not None and _raw_notes(work, items, notes):
        for raw, vr, t in notes:
            _remember(work, raw, vr, t)
    else:
        _remember_tree(work, sequence_value(ds, tag))


def _raw_notes(
    work: InstanceWork, items: list[dict[Any, RawDataElement]], notes: list[tuple[bytes | None, str, int]]
) -> bool:
    """Collect what _remember_tree would note in undecoded items; False where they must be decoded."""
    op = work.table.op
    for elements in items:
        for tag, element in elements.items():
            t = int(tag)
            vr = _vr_of(element, t)
            if vr == "SQ":
                if element.VR != "SQ":
                    return False  # a sequence hidden in UN: pydicom decodes it
                if not element.value:
                    continue  # an empty sequence
                nested = nested_raw_items(element)
                if nested is None or not _raw_notes(work, nested, notes):
                    return False
            elif t >> 16 & 1 or op(t) not in (Op.KEEP, Op.RECURSE):
                value = element.value
                notes.append((value if type(value) is bytes else None, vr, t))
    return True


def _remember_tree(work: InstanceWork, sequence: Sequence) -> None:
    """Note the identifying values inside a sequence that goes away (codes and safe values are not)."""
    op = work.table.op
    for item in sequence:
        for tag in list(item.keys()):
            t = int(tag)
            element = item.get_item(tag)
            vr = _vr_of(element, t)
            if vr == "SQ":
                _remember_tree(work, sequence_value(item, tag))
            elif (t >> 16) & 1 or op(t) not in (Op.KEEP, Op.RECURSE):
                _remember(work, _raw_bytes(item, t, element), vr, t)


def _ascii_values(raw: bytes | None) -> list[str]:
    """UI, DA and DT values are ASCII by definition: decode them without pydicom's machinery."""
    if not raw:
        return []
    return [value.strip(" \x00") for value in raw.decode("ascii", "replace").split("\\")]


def _one_or_many(values: list[str]) -> object:
    return values[0] if len(values) == 1 else values


def _dummy(vr: str, work: InstanceWork, raw: bytes | None) -> object:
    if vr == "UI":
        return _mapped_uids(raw, work)
    if vr in NUMBER_VRS:
        return 0
    if vr in BINARY_VRS:
        return b""
    return _DUMMIES.get(vr, DUMMY_TEXT)[: _MAX_LENGTH.get(vr, 64)]


def _mapped_uids(raw: bytes | None, work: InstanceWork) -> object:
    values = _ascii_values(raw)
    if not values:
        return None
    return _one_or_many([work.keys.uid(value) if value else "" for value in values])


def _map_uids(value: object, work: InstanceWork) -> object:
    if isinstance(value, list | tuple | MultiValue):
        return [work.keys.uid(str(v)) for v in value]
    return work.keys.uid(str(value)) if value else value


def _shifted(raw: bytes | None, vr: str, work: InstanceWork) -> object | None:
    """The dates moved back by the patient's offset; a dummy for an unreadable date; None: remove."""
    if vr not in {"DA", "DT"}:
        return None
    values = _ascii_values(raw)
    if not values:
        return None
    shifted = [_shift_date_cached(value, vr, work.date_offset) if value else "" for value in values]
    if any(value is None for value in shifted):
        return _DUMMIES[vr]
    return _one_or_many(cast(list[str], shifted))  # no None: that returned the dummy above


def shift_date_text(value: str, vr: str, days: int) -> str | None:
    """DA or DT moved back by `days`; None when the value is not a date we can shift."""
    match = _DATE.match(value.strip())
    if not match:
        return None
    try:
        shifted = date(int(match.group(1)), int(match.group(2)), int(match.group(3))) - timedelta(days=days)
    except ValueError:
        return None
    rest = match.group(4) if vr == "DT" else ""
    return shifted.strftime("%Y%m%d") + rest


# Cached: a patient's dates repeat in every file of a study.
_shift_date_cached = lru_cache(maxsize=4096)(shift_date_text)


def _shift(ds: Dataset, tag: int, vr: str, work: InstanceWork) -> bool:
    """Shift a date in place; False when it must be removed instead."""
    shifted = _shifted(_raw_bytes(ds, tag), vr, work)
    if shifted is None:
        return False
    ds[tag] = DataElement(tag, vr, shifted)
    return True


def _cap_age(value: str) -> str:
    match = re.match(r"^(\d{3})([DWMY])$", value.strip())
    if not match:
        return ""
    if match.group(2) == "Y" and int(match.group(1)) > 89:
        return "090Y"
    return value


_PRIVATE_REMOVED = ("private", Op.REMOVE.value)


def _apply_private(ds: Dataset, work: InstanceWork, private: list[BaseTag]) -> None:
    """Remove every private element but those on the safe list (and their creators)."""
    safe_private = work.plan.safe_private
    creators = {}
    for t in private:
        if 0x0010 <= (t & 0xFFFF) <= 0x00FF:
            # Decoded in place only where a block may be kept (then written as decoded, as ever).
            value = ds[t].value if safe_private else peek(ds, t)
            creators[int(t)] = (t, value.strip() if isinstance(value, str) else str(value))
    kept_blocks: set[int] = set()
    for t in private:
        group, element = t >> 16, t & 0xFFFF
        if element < 0x1000:
            if element < 0x0010:
                del ds[t]  # private group lengths and reserved elements
            continue
        creator_tag = (group << 16) | (element >> 8)
        creator = creators.get(creator_tag, (None, None))[1]
        if creator is not None and (creator, group, element & 0xFF) in safe_private:
            kept_blocks.add(creator_tag)
            work.actions[(f"private:{creator}:{group:04X}:{element & 0xFF:02X}", Op.KEEP.value)] += 1
            continue
        item = ds.get_item(t)
        vr = _vr_of(item, int(t))
        if vr == "SQ" or (isinstance(item, RawDataElement) and vr == "UN" and _looks_like_sequence(item)):
            try:
                _remember_sequence(work, ds, t)
            except Exception:  # an undecodable private blob: remove it all the same
                _remember(work, _raw_bytes(ds, t, item), "UN", int(t))
        else:
            _remember(work, _raw_bytes(ds, t, item), vr, int(t))
        del ds[t]
        work.actions[_PRIVATE_REMOVED] += 1
    for creator_tag, (key, creator) in creators.items():
        if creator_tag not in kept_blocks:
            _remember(work, creator.encode("utf-8", "replace"), "LO", creator_tag)
            del ds[key]


def _looks_like_sequence(item: RawDataElement) -> bool:
    value = item.value or b""
    return item.length == 0xFFFFFFFF or value[:4] in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")


def apply_plan(ds: Dataset, work: InstanceWork) -> None:
    """Apply the plan to `ds` and to every item of every sequence it keeps."""
    # The raw element map, by its own tag objects: reading it directly keeps untouched elements
    # undecoded, and pydicom's tags compare slowly with anything but themselves.
    elements = ds._dict
    tags = list(elements)
    private = [tag for tag in tags if tag >> 16 & 1]
    if private:
        _apply_private(ds, work, private)
    decisions = work.table.decisions
    decide = work.table.decide
    actions = work.actions
    for tag in tags:
        t = int(tag)
        if t >> 16 & 1:
            continue  # private: handled above
        if not t & 0xFFFF:
            del ds[tag]  # group lengths are recomputed by the writer, never trusted
            continue
        item = elements[tag]
        decision = decisions.get((t, item.VR)) or decide(t, item.VR)
        actions[decision.action] += 1
        step = decision.step
        if step == _KEEP:
            continue
        if step == _SEQUENCE:
            _apply_to_sequence(ds, tag, decision.op, work)
            continue
        vr = decision.vr
        raw = _raw_bytes(ds, t, item)
        if step == _RETAIN:
            work.kept.update(_values(raw, vr))
            continue
        if step == _KEEP_SAFE:
            if raw:
                # Values of merely safe attributes stay suspects: a name there is a leak.
                work.safe_raw.append(raw)
            continue
        if step == _CLEAN:
            _clean_scalar(ds, t, vr, work, raw)
            continue
        if decision.remembers:
            _note(work, raw, vr, decision.keyword, decision.strong)
        # New elements are built from the raw bytes: decoding the old value first would cost more
        # than everything else the plan does.
        if step == _REMOVE:
            del ds[tag]
        elif step == _BLANK:
            _replace(ds, tag, vr, item, b"" if vr in BINARY_VRS else None)
        elif step == _DUMMY:
            _replace(ds, tag, vr, item, _dummy(vr, work, raw))
        elif step == _UID:
            _replace(ds, tag, vr, item, _mapped_uids(raw, work))
        elif step == _PSEUDONYM:
            _replace(ds, tag, vr, item, work.pseudonym)
        else:  # _SHIFT
            shifted = _shifted(raw, vr, work)
            if shifted is None:
                del ds[tag]
            else:
                _replace(ds, tag, vr, item, shifted)


def _replace(ds: Dataset, tag: BaseTag, vr: str, source: object, value: object) -> None:
    """Put `value` in place of the element, as raw bytes when it is plain ASCII text.

    Every replacement the plan makes (dummies, UIDs, pseudonyms, shifted dates) is ASCII: written
    as a raw element it skips pydicom's decode-and-encode path, the dearest part of writing.
    """
    if (
        isinstance(source, RawDataElement)
        and vr in TEXT_VRS
        and (value is None or isinstance(value, str | list))
    ):
        text = "" if value is None else value if isinstance(value, str) else "\\".join(value)
        if text.isascii():
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
            # Standard tags only, never Pixel Data: the dataset has nothing else to update.
            ds._dict[tag] = RawDataElement(
                source.tag,
                vr,
                len(data),
                data,
                source.value_tell,
                source.is_implicit_VR,
                source.is_little_endian,
                source.is_raw,
                source.is_buffered,
            )
            return
    ds[tag] = DataElement(tag, vr, value)


def _apply_to_sequence(ds: Dataset, tag: int, op: Op, work: InstanceWork) -> None:
    if op is Op.REMOVE:
        _remember_sequence(work, ds, tag)
        del ds[tag]
        return
    sequence = sequence_value(ds, tag)
    if op in (Op.BLANK, Op.PSEUDONYM, Op.SHIFT_DATE, Op.UID):
        _remember_tree(work, sequence)
        ds[tag].value = Sequence()
        return
    # KEEP, RECURSE, DUMMY and CLEAN keep the structure and de-identify every item.
    for item in sequence:
        apply_plan(item, work)


def _clean_scalar(ds: Dataset, tag: int, vr: str, work: InstanceWork, raw: bytes | None) -> None:
    if vr in BINARY_VRS:
        _remember(work, raw, vr, tag)
        del ds[tag]
    elif vr == "UI":
        _remember(work, raw, vr, tag)
        ds[tag].value = _map_uids(ds[tag].value, work)
    elif vr == "AS":
        _set_text(ds, tag, vr, _cap_age(str(peek(ds, tag) or "")))
    elif vr in {"DA", "DT"}:
        _remember(work, raw, vr, tag)
        if not (work.plan.shifts_dates and _shift(ds, tag, vr, work)):
            ds[tag].value = _DUMMIES[vr]
    elif vr in {"PN"}:
        _remember(work, raw, vr, tag)
        ds[tag].value = DUMMY_TEXT
    elif vr in TEXT_VRS and vr != "TM":
        work.to_clean.append((ds, tag))  # once every identifying value of the instance is known


def _set_text(ds: Dataset, tag: int, vr: str, value: str) -> None:
    """`ds[tag].value = value` for an AS, CS or other ISO 8859 text value, kept undecoded where the
    element is: the raw bytes are the ones the decoded element would be written with."""
    element = ds._dict.get(tag)  # type: ignore[call-overload]  # pydicom types the keys BaseTag, not int
    if (
        isinstance(element, RawDataElement)
        and vr == element.VR
        and not element.is_implicit_VR
        and element.is_little_endian
        and value.isascii()
    ):
        data = encoded_value(vr, value, ["iso8859"])  # these VRs ignore the character set
        if data is not None:
            ds._dict[element.tag] = RawDataElement(
                element.tag, vr, len(data), data, element.value_tell, False, True, True, False
            )
            return
    ds[tag].value = value


def scrub_text(text: str, identifying: re.Pattern[str] | None) -> str:
    """`text` with every identifying value and date, phone, e-mail pattern replaced by ***."""
    if identifying is not None:
        text = identifying.sub(REDACTED, text)
    for pattern in _SCRUB_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def identifying_words(work: InstanceWork) -> tuple[str, ...]:
    """Every identifying value of the instance except UIDs (none hide in prose), decoded, longest first."""
    kept = work.kept
    values = frozenset(
        value
        for value, origin in work.identifying.items()
        if value not in kept and not _is_uid_origin(origin, value)
    )
    return _words_for(values, tuple(work.encodings))


_UID_LIKE = re.compile(rb"^[0-9]+(\.[0-9]+){2,}$")


def _is_uid_origin(origin: str, value: bytes = b"") -> bool:
    """UIDs and date-times never hide in prose as such (the date patterns catch the dates)."""
    return _is_uid_or_time_keyword(origin) or bool(_UID_LIKE.match(value))  # the cached test first


@lru_cache(maxsize=1024)
def _is_uid_or_time_keyword(keyword: str) -> bool:
    tag = tag_for_keyword(keyword)
    return tag is not None and dictionary_VR(tag) in {"UI", "DT", "TM"}


@lru_cache(maxsize=256)
def _words_for(values: frozenset[bytes], encodings: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: the files of one series share their patient's names, IDs and dates.
    words = {decode_bytes(value, list(encodings), set()).strip() for value in values}
    words = {word for word in words if len(word) >= _MIN_IDENTIFYING}
    return tuple(sorted(words, key=len, reverse=True))  # longest first: whole names before parts


def _pattern_in(words: tuple[str, ...], text: str) -> re.Pattern[str] | None:
    """One case-insensitive pattern for the identifying words that occur in `text`, longest first.

    It replaces exactly what the pattern of all the instance's words would (a word that matches
    nowhere in the text never takes part in a match), and it is compiled from a few words
    instead of dozens: compiling the whole alternation again for every series cost more than
    all the rest of the cleaning.
    """
    if text.isascii():
        lowered = text.lower()
        # ASCII against ASCII: a case-insensitive match is a substring of the lowered text.
        present = tuple(
            word
            for word in words
            if (word.lower() in lowered if word.isascii() else _word(word).search(text))
        )
    else:
        present = tuple(word for word in words if _word(word).search(text))
    return _alternation(present)


@lru_cache(maxsize=4096)
def _word(word: str) -> re.Pattern[str]:
    return re.compile(re.escape(word), re.IGNORECASE)


@lru_cache(maxsize=1024)
def _alternation(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile("|".join(re.escape(word) for word in words), re.IGNORECASE)


def clean_deferred(work: InstanceWork) -> None:
    if not work.to_clean:
        return
    words = identifying_words(work)
    encodings: dict[int, tuple[str, ...]] = {}  # by dataset: most elements to clean share one
    for ds, tag in work.to_clean:
        element = ds._dict.get(tag)  # type: ignore[call-overload]  # pydicom types the keys BaseTag, not int
        if isinstance(element, RawDataElement):
            charset = encodings.get(id(ds))
            if charset is None:
                charset = encodings[id(ds)] = tuple(convert_encodings(ds._character_set))
            if _clean_raw(ds, element, words, charset):
                continue
        element = ds[tag]
        element.value = _scrubbed(element.value, words)


def _scrubbed(value: Any, words: tuple[str, ...]) -> Any:
    if isinstance(value, list | tuple | MultiValue) and len(value) > 1:
        return [_scrub(str(v), words) for v in value]
    return _scrub(str(value), words) if value else value


def _scrub(text: str, words: tuple[str, ...]) -> str:
    # Cached for short texts: the descriptions and comments of a series repeat in every file.
    return _scrub_cached(text, words) if len(text) <= 1024 else scrub_text(text, _pattern_in(words, text))


@lru_cache(maxsize=4096)
def _scrub_cached(text: str, words: tuple[str, ...]) -> str:
    return scrub_text(text, _pattern_in(words, text))


_CLEANED: dict[tuple[bytes, str, tuple[str, ...], tuple[str, ...]], bytes | None] = {}
_UNSEEN: Any = object()  # not cached yet (a cached None: pydicom must decode the element)


def _clean_raw(
    ds: Dataset, element: RawDataElement, words: tuple[str, ...], encodings: tuple[str, ...]
) -> bool:
    """Scrub an undecoded text element into new raw bytes; False where pydicom must decode it.

    The new bytes are what decoding it, scrubbing the value and encoding the result would give
    (the same functions do it, once per distinct value, identifying words and character set):
    the files of a series repeat their descriptions and comments.
    """
    raw, vr = element.value, element.VR
    if (
        type(raw) is not bytes
        or vr not in TEXT_VRS
        or element.is_implicit_VR
        or not element.is_little_endian
        or len(raw) > 1024
    ):
        return False
    key = (raw, vr, encodings, words)
    data = _CLEANED.get(key, _UNSEEN)
    if data is _UNSEEN:
        decoded = convert_raw_data_element(
            element, encoding=ds.original_character_set or ds._character_set, ds=ds
        )
        data = None
        if vr == decoded.VR:  # as Dataset.__getitem__ would decode it
            data = encoded_value(vr, _scrubbed(decoded.value, words), list(encodings))
        if len(_CLEANED) >= 4096:
            _CLEANED.clear()
        _CLEANED[key] = data
    if data is None:
        return False
    ds._dict[element.tag] = RawDataElement(
        element.tag, vr, len(data), data, element.value_tell, False, True, True, False
    )
    return True


def new_work(ds: Dataset, plan: Plan, keys: DatasetKeys) -> InstanceWork:
    patient_key = patient_key_of(ds)
    try:
        encodings = convert_encodings(peek(ds, 0x00080005) or "ISO_IR 6")
    except Exception:
        encodings = ["iso8859"]
    return InstanceWork(
        plan=plan,
        keys=keys,
        pseudonym=keys.pseudonym(patient_key),
        date_offset=keys.date_offset_days(patient_key),
        encodings=encodings,
    )


def patient_key_of(ds: Dataset) -> str:
    """Who the instance belongs to, as the hospital identifies them (issuer-qualified ID)."""
    # Peeked at, not decoded in place: the plan replaces these from their raw bytes.
    patient_id = str(peek(ds, 0x00100020) or "").strip()
    issuer = str(peek(ds, 0x00100021) or "").strip()
    if patient_id:
        return f"{issuer}|{patient_id}"
    name = str(peek(ds, 0x00100010) or "").strip()
    birth = str(peek(ds, 0x00100030) or "").strip()
    if name:
        return f"name|{name}|{birth}"
    # No identity at all: each study stands alone.
    return f"study|{peek(ds, 0x0020000D, '')}"
