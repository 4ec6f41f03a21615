"""Identity: who is calling, established from a bearer JWT, and which roles they hold.

`verifier.TokenVerifier` checks tokens against the trusted issuers' keys (`jwks`), yields a
`principal.Principal` with `roles.Role`s, and `verifier.require_roles` admits or refuses it.
`dev_issuer.DevIssuer` mints tokens for the demo and tests. Nothing in this package ever logs,
stores or puts into an error message a token or any key material.
"""
