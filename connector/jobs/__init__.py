"""Compute-to-data jobs: submission (signed package, access decision), the queue shared by
workers, the run (model in its sandbox over the consented cohort), egress and signed results."""
