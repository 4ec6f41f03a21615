"""Cryptographic building blocks: key files and signatures (envelope encryption comes with storage)."""
