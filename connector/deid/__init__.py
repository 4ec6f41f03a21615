"""De-identification: DICOM PS3.15 Annex E profiles written as deid recipes, compiled once into a
plan of tag actions, applied file by file, verified, and reported."""
