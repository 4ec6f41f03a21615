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
from typing import Any

import jwt

from connector.compute.inference import StudyOutput
from connector.compute.manifest import Manifest
from connector.crypto.signing import ConnectorSigningKey

RESULT_TYPE = "connector-result+jwt"


class ResultError(Exception):
    """A result that cannot be verified; the message says why."""


@dataclass(frozen=True)
class ResultDocument:
    body: dict[str, Any]
    release: dict[str, Any]  # the egress policy's `result` input


def _opaque_order(outputs: list[StudyOutput]) -> list[StudyOutput]:
    return sorted(outputs, key=lambda o: hashlib.sha256(o.study_uid.encode()).hexdigest())


def build_result(
    outputs: list[StudyOutput],
    manifest: Manifest,
    provenance: dict[str, Any],
    cohort_patients: int,
    suppress: Any,
) -> ResultDocument:
    """The result body and its egress description. `suppress(counts) -> shown counts` applies the
    dataset's small-cell rule (numbers at or above k as they are, "<k" below)."""
    labels = manifest.output.labels
    kind = manifest.output.kind
    count = len(outputs)
    means = {label: (sum(o.values[label] for o in outputs) / count if count else 0.0) for label in labels}
    aggregate: dict[str, Any] = {"studies": count, "mean": {k: round(v, 6) for k, v in means.items()}}
    cells: list[int] = []
    if kind in ("classification", "aggregate-metrics"):
        predicted = Counter(max(o.values, key=o.values.__getitem__) for o in outputs)
        raw = {label: predicted.get(label, 0) for label in labels}
        shown = suppress(raw)
        aggregate["predicted"] = shown
        cells = [value for value in shown.values() if isinstance(value, int)]
    body: dict[str, Any] = {
        **provenance,
        "output_kind": kind,
        "labels": list(labels),
        "aggregate": aggregate,
    }
    per_study = kind != "aggregate-metrics"
    if per_study:
        body["per_study"] = [
            {"index": index, "values": {k: round(v, 6) for k, v in output.values.items()}}
            for index, output in enumerate(_opaque_order(outputs), start=1)
        ]
    size = len(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    release = {
        "kind": "per-study" if per_study else "aggregate",
        "cohort_size": cohort_patients,
        "min_cell": min(cells) if cells else None,
        "contains_pixels": False,
        "contains_pseudonyms": False,
        "bytes": size,
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
