"""Synthetic *identified* DICOM cohorts for demos and for testing de-identification.

``generate_cohort`` writes CT, MR, CR/DX, MG, US, Secondary Capture and Basic Text SR instances
with invented PHI planted everywhere real files carry it, plus ``synth-manifest.json`` listing
every planted value and its place. This package never uses real patient data and never reads
the clock or an unseeded random source: the same seed gives byte-identical files.
"""

from connector.synth.cohort import SynthSummary, generate_cohort
from connector.synth.manifest import MANIFEST_NAME, resolve
from connector.synth.plan import count_files

__all__ = ["MANIFEST_NAME", "SynthSummary", "count_files", "generate_cohort", "resolve"]
