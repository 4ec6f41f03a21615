"""Compute-to-data: model packages, their signatures, the data they run on, and jobs."""
