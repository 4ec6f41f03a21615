"""The connector's side of the catalog: which datasets are described and published, their derived
facts, the served /catalog, and what was pushed to remote catalogs (the record format itself is
the standalone `catalog` package)."""
