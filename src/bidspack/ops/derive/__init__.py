"""``bidspack derive``: derived datasets (training sets, crops, classifications,
selections) made from a bidspack source dataset.

- :mod:`.source`: the source dataset opened read-only (version, manifest digest,
  images by BIDS entities, region reads in voxels and micrometres).
- :mod:`.dataset`: the derived dataset (a standalone BIDS derivative dataset written
  by transactional steps with step records, manifest and provenance).
- :mod:`.patches`: ``bidspack derive patches`` (2D patches, exact and near-duplicate
  decisions, a Parquet index).
- :mod:`.dedup`: difference hashes and greedy near-duplicate selection.
- :mod:`.subvolume`, :mod:`.export`: the 3D block around a patch; TIFF/HDF5 exports.
- :mod:`.crops`: image + mask crops around SWC tracings or label images.
- :mod:`.models`, :mod:`.classify`, :mod:`.select`: patch classification (rules,
  scikit-learn, the CEM500K ResNet34) and query-selected subsets.
- :mod:`.yoda`: ``--datalad``: the source as a pinned DataLad subdataset.

See ``docs/derived-datasets.md``.
"""
