"""The audit trail: append-only, hash-chained, with signed checkpoints."""
