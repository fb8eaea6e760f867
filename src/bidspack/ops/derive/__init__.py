"""``bidspack derive``: derived datasets (training sets, crops, classifications,
selections) made from a bidspack source dataset.

- :mod:`.source`: the source dataset opened read-only (version, manifest digest,
  images by BIDS entities, region reads in voxels and micrometres).
- :mod:`.dataset`: the derived dataset (a standalone BIDS derivative dataset written
  by transactional steps with step records, manifest and provenance).
- :mod:`.patches`: ``bidspack derive patches`` (2D patches, exact and near-duplicate
  decisions, a Parquet index).
- :mod:`.dedup`: difference hashes and greedy near-duplicate selection.

See ``docs/derived-datasets.md``.
"""
