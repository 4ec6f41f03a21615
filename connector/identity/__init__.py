"""Identity: bearer-token verification against trusted issuers, roles, and the development issuer."""
