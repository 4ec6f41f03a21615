"""What a failed job tells its researcher and the audit trail: an error code and a fixed sentence.

A model is untrusted code: any text it can influence (an exception's message, a shape it returns,
a traceback) would be a channel out of the connector that no egress decision saw. So every failure
is mapped here to one of a few codes, each with a sentence written by us; the model's own text
never reaches a job's reasons, the API, the client, the CLI or the audit trail. This module must
never format a message with anything taken from the failure it describes.
"""

from __future__ import annotations

import hashlib

# Failures that the model (or its package) can cause: code -> the only sentence anyone sees.
MODEL_FAILURES: dict[str, str] = {
    "model_failed": "the model failed while it ran; nothing was released",
    "model_refused": "the model did not load or failed its dry run in the sandbox; nothing was released",
    "out_of_memory": "the model ran out of memory; nothing was released",
    "input_refused": "the sandbox refused a batch that does not fit the model's input spec; "
    "nothing was released",
    "output_refused": "the model's output does not match its manifest (shape, classes or values); "
    "nothing was released",
    "forbidden_syscall": "the model tried a system call the sandbox forbids; nothing was released",
    "protocol": "the model process broke the sandbox protocol; nothing was released",
    "timeout": "the model ran past its time limit; nothing was released",
    "cpu_time": "the model used up its CPU time; nothing was released",
    "crashed": "the model process crashed; nothing was released",
    "isolation_unavailable": "this connector cannot confine the model as its settings require "
    "(the operator's log names the missing isolation layers); nothing was released",
    "model_output": "the model's output does not match its manifest (shape, classes or values); "
    "nothing was released",
    "invalid_package": "the stored model package could not be read; nothing was released",
    "internal_error": "the job failed inside the connector; nothing was released (the operator's log "
    "has a reference)",
}

# The sandbox's codes (connector.compute.sandbox_wire.ERROR_CODES and the supervisor's own) keep
# their meaning; any other code (one added later, or text that is not a code) is told as the
# generic model failure.
_SANDBOX_CODES = frozenset(MODEL_FAILURES) - {"model_output", "invalid_package", "internal_error"}


def sandbox_failure(code: str) -> tuple[str, str]:
    """(code, sentence) for a SandboxError's code; its detail is never used."""
    known = code if code in _SANDBOX_CODES else "model_failed"
    return known, MODEL_FAILURES[known]


def model_failure(code: str) -> tuple[str, str]:
    """(code, sentence) for one of MODEL_FAILURES' codes (unknown codes become internal_error)."""
    known = code if code in MODEL_FAILURES else "internal_error"
    return known, MODEL_FAILURES[known]


def error_reference(exc: BaseException) -> str:
    """A bounded reference to an unexpected error for the operator's log: a digest of its type and
    text, never the text (which a model may have written)."""
    text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"[:100_000]
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
