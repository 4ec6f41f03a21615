"""Apply a compiled Plan to one dataset, recursively, and remember what was identifying.

Every element, in every sequence item at any depth (SR content trees included), gets exactly
the plan's operation; private elements are removed unless on the safe list. The original values
of everything removed, blanked or replaced are collected as the instance's identifying values,
for cleaning free text and for leak verification. This module never writes files.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from connector.deid.keys import DatasetKeys
from connector.deid.options import SAFE_ATTRIBUTES
from connector.deid.plan import Op, Plan
from connector.deid.verify import STRONG_IDENTIFIERS

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


def _vr_of(item: object, tag: int) -> str:
    vr = getattr(item, "VR", None)
    if vr and (vr != "UN" or (tag >> 16) & 1):
        return str(vr)
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _raw_bytes(ds: Dataset, tag: int, item: object = None) -> bytes | None:
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


def _values(raw: bytes | None, vr: str) -> list[bytes]:
    """The searchable text values of an element (names also by component)."""
    if not raw or vr in NUMBER_VRS or len(raw) > 4096:
        return []
    if vr in BINARY_VRS and not _PRINTABLE.match(raw):
        return []
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
    return found


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
    keyword = _keyword(tag)
    for value in _values(raw, vr):
        # Remember the strongest origin: a name seen in a private tag and in Patient's Name is a name.
        if value not in work.identifying or keyword in STRONG_IDENTIFIERS:
            work.identifying[value] = keyword


def _remember_tree(work: InstanceWork, sequence: Sequence) -> None:
    """Note the identifying values inside a sequence that goes away (codes and safe values are not)."""
    for item in sequence:
        for tag in list(item.keys()):
            t = int(tag)
            element = item.get_item(tag)
            vr = _vr_of(element, t)
            if vr == "SQ":
                _remember_tree(work, item[tag].value)
            elif (t >> 16) & 1 or work.plan.op_for(t) not in (Op.KEEP, Op.RECURSE):
                _remember(work, _raw_bytes(item, t), vr, t)


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
    shifted = [shift_date_text(value, vr, work.date_offset) if value else "" for value in values]
    if any(value is None for value in shifted):
        return _DUMMIES[vr]
    return _one_or_many(shifted)  # type: ignore[arg-type]


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


def _apply_private(ds: Dataset, work: InstanceWork, private: list[int]) -> None:
    """Remove every private element but those on the safe list (and their creators)."""
    creators = {}
    for t in private:
        if 0x0010 <= (t & 0xFFFF) <= 0x00FF:
            value = ds[t].value
            creators[t] = value.strip() if isinstance(value, str) else str(value)
    kept_blocks: set[int] = set()
    for t in private:
        group, element = t >> 16, t & 0xFFFF
        if element < 0x1000:
            if element < 0x0010:
                del ds[t]  # private group lengths and reserved elements
            continue
        creator_tag = (group << 16) | (element >> 8)
        creator = creators.get(creator_tag)
        if creator is not None and (creator, group, element & 0xFF) in work.plan.safe_private:
            kept_blocks.add(creator_tag)
            work.actions[(f"private:{creator}:{group:04X}:{element & 0xFF:02X}", Op.KEEP.value)] += 1
            continue
        item = ds.get_item(t)
        vr = _vr_of(item, t)
        if vr == "SQ" or (isinstance(item, RawDataElement) and vr == "UN" and _looks_like_sequence(item)):
            try:
                _remember_tree(work, ds[t].value)
            except Exception:  # an undecodable private blob: remove it all the same
                _remember(work, _raw_bytes(ds, t, item), "UN", t)
        else:
            _remember(work, _raw_bytes(ds, t, item), vr, t)
        del ds[t]
        work.actions[("private", Op.REMOVE.value)] += 1
    for creator_tag, creator in creators.items():
        if creator_tag not in kept_blocks:
            _remember(work, creator.encode("utf-8", "replace"), "LO", creator_tag)
            del ds[creator_tag]


def _looks_like_sequence(item: RawDataElement) -> bool:
    value = item.value or b""
    return item.length == 0xFFFFFFFF or value[:4] in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")


def apply_plan(ds: Dataset, work: InstanceWork) -> None:
    """Apply the plan to `ds` and to every item of every sequence it keeps."""
    tags = [int(tag) for tag in ds.keys()]  # noqa: SIM118  (iterating a Dataset converts elements)
    private = [t for t in tags if (t >> 16) & 1]
    if private:
        _apply_private(ds, work, private)
    plan = work.plan
    # The raw element map: reading it directly keeps untouched elements undecoded.
    elements = ds._dict
    for t in tags:
        if (t >> 16) & 1:
            continue  # private: handled above
        tag = t
        if t & 0xFFFF == 0:
            del ds[tag]  # group lengths are recomputed by the writer, never trusted
            continue
        op = plan.op_for(t)
        item = elements[t]
        vr = _vr_of(item, t)
        work.actions[(_keyword(t), op.value)] += 1
        if vr == "SQ":
            _apply_to_sequence(ds, t, op, work)
            continue
        if op is Op.KEEP or op is Op.RECURSE:
            if vr in TEXT_VRS:
                raw = _raw_bytes(ds, t, item)
                if plan.sources.get(t) != SAFE_ATTRIBUTES:
                    # Retained on purpose by an option (institution, device, dates): not a leak.
                    work.kept.update(_values(raw, vr))
                elif raw:
                    # Values of merely safe attributes stay suspects: a name there is a leak.
                    work.safe_raw.append(raw)
            continue
        raw = _raw_bytes(ds, t, item)
        if op is Op.SHIFT_DATE and vr not in {"DA", "DT"} and vr in TEXT_VRS:
            # Times and UTC offsets stay as they are: without the real date they identify no one.
            work.kept.update(_values(raw, vr))
            continue
        if op is Op.CLEAN:
            _clean_scalar(ds, t, vr, work, raw)
            continue
        _remember(work, raw, vr, t)
        # New elements are built from the raw bytes: decoding the old value first would cost more
        # than everything else the plan does.
        if op is Op.REMOVE:
            del ds[tag]
        elif op is Op.BLANK:
            _replace(ds, t, vr, item, b"" if vr in BINARY_VRS else None)
        elif op is Op.DUMMY:
            _replace(ds, t, vr, item, _dummy(vr, work, raw))
        elif op is Op.UID:
            _replace(ds, t, vr, item, _mapped_uids(raw, work))
        elif op is Op.PSEUDONYM:
            _replace(ds, t, vr, item, work.pseudonym)
        elif op is Op.SHIFT_DATE:
            shifted = _shifted(raw, vr, work)
            if shifted is None:
                del ds[tag]
            else:
                _replace(ds, t, vr, item, shifted)


def _replace(ds: Dataset, tag: int, vr: str, source: object, value: object) -> None:
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
            ds._dict[tag] = source._replace(VR=vr, length=len(data), value=data)
            return
    ds[tag] = DataElement(tag, vr, value)


def _apply_to_sequence(ds: Dataset, tag: int, op: Op, work: InstanceWork) -> None:
    sequence = ds[tag].value
    if op in (Op.REMOVE, Op.BLANK, Op.PSEUDONYM, Op.SHIFT_DATE, Op.UID):
        _remember_tree(work, sequence)
        if op is Op.REMOVE:
            del ds[tag]
        else:
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
        ds[tag].value = _cap_age(str(ds[tag].value or ""))
    elif vr in {"DA", "DT"}:
        _remember(work, raw, vr, tag)
        if not (work.plan.shifts_dates and _shift(ds, tag, vr, work)):
            ds[tag].value = _DUMMIES[vr]
    elif vr in {"PN"}:
        _remember(work, raw, vr, tag)
        ds[tag].value = DUMMY_TEXT
    elif vr in TEXT_VRS and vr != "TM":
        work.to_clean.append((ds, tag))  # once every identifying value of the instance is known


def scrub_text(text: str, identifying: re.Pattern[str] | None) -> str:
    """`text` with every identifying value and date, phone, e-mail pattern replaced by ***."""
    if identifying is not None:
        text = identifying.sub(REDACTED, text)
    for pattern in _SCRUB_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def identifying_pattern(work: InstanceWork) -> re.Pattern[str] | None:
    """One pattern for every identifying value of the instance except UIDs (none hide in prose)."""
    words = frozenset(
        value
        for value, origin in work.identifying.items()
        if value not in work.kept and not _is_uid_origin(origin, value)
    )
    return _pattern_for(words, tuple(work.encodings))


_UID_LIKE = re.compile(rb"^[0-9]+(\.[0-9]+){2,}$")


def _is_uid_origin(origin: str, value: bytes = b"") -> bool:
    """UIDs and date-times never hide in prose as such (the date patterns catch the dates)."""
    return bool(_UID_LIKE.match(value)) or _is_uid_or_time_keyword(origin)


@lru_cache(maxsize=1024)
def _is_uid_or_time_keyword(keyword: str) -> bool:
    tag = tag_for_keyword(keyword)
    return tag is not None and dictionary_VR(tag) in {"UI", "DT", "TM"}


@lru_cache(maxsize=256)
def _pattern_for(values: frozenset[bytes], encodings: tuple[str, ...]) -> re.Pattern[str] | None:
    # Cached: the files of one series share their patient's names, IDs and dates.
    words = {decode_bytes(value, list(encodings), set()).strip() for value in values}
    words = {word for word in words if len(word) >= _MIN_IDENTIFYING}
    if not words:
        return None
    alternatives = sorted(words, key=len, reverse=True)  # longest first: whole names before parts
    return re.compile("|".join(re.escape(word) for word in alternatives), re.IGNORECASE)


def clean_deferred(work: InstanceWork) -> None:
    if not work.to_clean:
        return
    pattern = identifying_pattern(work)
    for ds, tag in work.to_clean:
        element = ds[tag]
        if element.VM > 1:
            element.value = [scrub_text(str(v), pattern) for v in element.value]
        elif element.value:
            element.value = scrub_text(str(element.value), pattern)


def new_work(ds: Dataset, plan: Plan, keys: DatasetKeys) -> InstanceWork:
    patient_key = patient_key_of(ds)
    try:
        encodings = convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
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
    patient_id = str(ds.get("PatientID") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID") or "").strip()
    if patient_id:
        return f"{issuer}|{patient_id}"
    name = str(ds.get("PatientName") or "").strip()
    birth = str(ds.get("PatientBirthDate") or "").strip()
    if name:
        return f"name|{name}|{birth}"
    # No identity at all: each study stands alone.
    return f"study|{ds.get('StudyInstanceUID', '')}"
