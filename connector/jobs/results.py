"""A job's result: built from the model's per-study values, small cells suppressed by the policy's
own rule, described for the egress decision, and signed by the connector (a JWS, EdDSA).

Results never name a study or a patient: per-study values are numbered 1..n in an order that
says nothing (sorted by the de-identified UID's digest). `verify_result` checks a result with the
connector's public key, for `connector verify-result` and for anyone who receives one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

from connector.compute.manifest import Manifest
from connector.crypto.signing import ConnectorSigningKey

# The researcher's client verifies results through this module: it must not load torch (through
# the inference module) or numpy until a result is built.
if TYPE_CHECKING:
    from connector.compute.inference import StudyOutput

RESULT_TYPE = "connector-result+jwt"
DEFAULT_DECIMALS = 2  # per-study precision when the policy names none (it then denies anyway)


class ResultError(Exception):
    """A result that cannot be verified; the message says why."""


@dataclass(frozen=True)
class ResultDocument:
    body: dict[str, Any]
    release: dict[str, Any]  # the egress policy's `result` input


def _opaque_order(outputs: list[StudyOutput]) -> list[StudyOutput]:
    return sorted(outputs, key=lambda o: hashlib.sha256(o.study_uid.encode()).hexdigest())


def _carries_pixels(value: Any) -> bool:
    """Whether a released value holds an image or a mask: any nested array of numbers (a row of a
    picture) rather than one number per label. Worked out from the body itself, so a future kind
    that releases masks is described as it is, never assumed away."""
    if isinstance(value, dict):
        return any(_carries_pixels(item) for item in value.values())
    if isinstance(value, list):
        return any(isinstance(item, list | tuple) or _carries_pixels(item) for item in value)
    return False


def build_result(
    outputs: list[StudyOutput],
    manifest: Manifest,
    provenance: dict[str, Any],
    cohort_patients: int,
    suppress: Any,
    decimals: int = DEFAULT_DECIMALS,
) -> ResultDocument:
    """The result body and its egress description. `suppress(counts) -> shown counts` applies the
    dataset's small-cell rule (numbers at or above k as they are, "<k" below). Per-study values are
    quantised to `decimals` (the dataset's per_study_decimals), cohort means to two more; the
    description says what the result carries (labels, decimals, studies, every number released)
    so that the egress policy decides on the channel, not on trust."""
    labels = list(manifest.output.labels)
    kind = manifest.output.kind
    count = len(outputs)
    ordered = _opaque_order(outputs)
    import numpy as np

    # One matrix (studies x labels), quantised in numpy: whatever precision the model produced,
    # no released value carries more than the dataset allows.
    matrix = np.array([[o.values[label] for label in labels] for o in ordered], dtype=np.float64)
    matrix = np.round(matrix.reshape(count, len(labels)), decimals)
    means = matrix.mean(axis=0) if count else np.zeros(len(labels))
    mean_values = np.round(means, decimals + 2).tolist()
    aggregate: dict[str, Any] = {"studies": count, "mean": dict(zip(labels, mean_values, strict=True))}
    numbers = 1 + len(labels)
    cells: list[int] = []
    if kind in ("classification", "aggregate-metrics"):
        predicted = Counter(labels[index] for index in matrix.argmax(axis=1).tolist()) if count else Counter()
        raw = {label: predicted.get(label, 0) for label in labels}
        shown = suppress(raw)
        aggregate["predicted"] = shown
        numbers += len(shown)
        cells = [value for value in shown.values() if isinstance(value, int)]
    body: dict[str, Any] = {
        **provenance,
        "output_kind": kind,
        "labels": labels,
        "aggregate": aggregate,
    }
    per_study = kind != "aggregate-metrics"
    if per_study:
        body["per_study"] = [
            {"index": index, "values": dict(zip(labels, row, strict=True))}
            for index, row in enumerate(matrix.tolist(), start=1)
        ]
        body["per_study_decimals"] = decimals
        numbers += count * len(labels)
    size = len(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    release = {
        "kind": "per-study" if per_study else "aggregate",
        "cohort_size": cohort_patients,
        "min_cell": min(cells) if cells else None,
        "contains_pixels": _carries_pixels(body.get("per_study", [])) or _carries_pixels(aggregate),
        "contains_pseudonyms": False,
        "bytes": size,
        "labels": len(labels),
        "decimals": decimals if per_study else None,
        "studies": count,
        "numbers": numbers,
    }
    return ResultDocument(body, release)


def sign_result(body: dict[str, Any], key: ConnectorSigningKey) -> str:
    return jwt.encode(body, key.jws_key, algorithm="EdDSA", headers={"kid": key.key_id, "typ": RESULT_TYPE})


def verify_result(token: str, public_jwk: dict[str, Any]) -> dict[str, Any]:
    """The result body when `token` is a result signed by the key `public_jwk`; ResultError else."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != RESULT_TYPE or header.get("alg") != "EdDSA":
            raise ResultError("this is not a connector result (wrong type or algorithm)")
        key = jwt.PyJWK(public_jwk, algorithm="EdDSA")
        return jwt.decode(
            token, key.key, algorithms=["EdDSA"], options={"verify_aud": False, "verify_exp": False}
        )
    except jwt.InvalidSignatureError:
        raise ResultError(
            "the signature does not match: the result was altered or signed by another key"
        ) from None
    except (jwt.PyJWTError, ValueError) as exc:
        raise ResultError(f"the result cannot be read: {exc}") from None
