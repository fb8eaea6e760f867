"""BIDS rules (from the BIDS schema via bidsschematools), paths, tables and sidecars."""
