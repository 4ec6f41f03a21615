"""The policy engine: OPA evaluating the DPO's Rego policies (embedded by default)."""
