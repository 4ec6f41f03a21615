"""The Eclipse Dataspace Protocol (DSP 2025-1) between connectors: catalog, contract negotiation and
transfer process, with peer identity and the imaging transfer types (ComputeToData,
EncryptedDataset-PULL).

Nothing in this package decides access by itself: every decision goes to the DPO's policies.
"""
