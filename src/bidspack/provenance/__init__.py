"""Provenance: the dataset manifest (checksums per file), per-step provenance records
(BIDS-Prov field names) and, later, DataLad integration."""
