"""HealthDCAT-AP catalog records for imaging datasets.

This package must never import anything from `connector`: catalogs can be built and validated
without the service.
"""
