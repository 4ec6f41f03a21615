"""Encrypted datasets: ingest (de-identify, encrypt, store, index), export, crypto-shredding."""
