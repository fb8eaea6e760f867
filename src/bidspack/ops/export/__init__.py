"""``bidspack export DATASET --format prov-json|ro-crate|bagit OUT``: publishable views of
a bidspack dataset, each checked with its own library's validator before it is kept.

- ``prov-json``: the step history of ``code/bidspack/provenance/*.json`` as one W3C
  PROV document (PROV-DM, https://www.w3.org/TR/prov-dm/), serialized as PROV-JSON
  (https://www.w3.org/submissions/prov-json/) by the ``prov`` package. One
  ``activity`` per step (start/end time, ``prov:label`` = operation, ``bidspack:step``,
  ``bidspack:parameters`` as JSON text), one ``entity`` per input (``bidspack:input:<xxh3>``,
  as in the records; every location it was read from) and per output version, with
  ``prov:location`` (dataset-relative) and ``bidspack:sha256``/``xxh3_128``/``pixel_hash``;
  ``used``, ``wasGeneratedBy``; one ``prov:SoftwareAgent`` per software and version,
  ``wasAssociatedWith`` (role ``bidspack:program`` for bidspack, ``bidspack:dependency``
  for its libraries). The version of a file that is in the dataset now is ``bids:<path>``
  (= ``bids::<path>``, the BIDS-Prov id of the records); a version replaced later is
  ``bidspack:generated:<transaction>/<path>`` and ``wasInvalidatedBy`` the step that
  replaced, renamed or deleted it; a renamed file ``wasDerivedFrom`` its old version.
  Check: read back with ``prov.read(format="json")`` with :class:`prov.model.ProvWarning`
  as an error, the same number of records of each kind, ``unified()`` (PROV-CONSTRAINTS
  key and impossibility constraints, no two records share an identifier) and every
  relation naming a declared element.
- ``ro-crate``: an attached RO-Crate 1.3 (https://w3id.org/ro/crate/1.3) made with
  ``rocrate``: a copy of the dataset plus ``ro-crate-metadata.json``. The root dataset
  has ``name``, ``description`` (README's first paragraph), ``license`` (SPDX entity),
  ``author`` (``Person``), ``keywords``, ``identifier`` (``DatasetDOI``) from
  ``dataset_description.json``, and follows the Process Run Crate profile 0.5
  (https://w3id.org/ro/wfrun/process/0.5, in ``conformsTo``): every file is a ``File``
  with ``contentSize``, ``encodingFormat``, ``sha256`` and ``description``; bidspack and
  its libraries are ``SoftwareApplication`` entities (``@id`` their release page,
  ``version``, ``url``; the libraries are bidspack's ``softwareRequirements``); every
  step is a ``CreateAction`` (``mentions`` of the root) with ``instrument`` bidspack,
  ``object`` its inputs (contextual ``File`` entities ``#input-<xxh3>``, not in the
  crate, ``alternateName`` = their submission paths) and its parameters
  (``PropertyValue``), ``result`` its outputs still in the dataset unchanged,
  ``startTime``/``endTime`` and ``actionStatus``. An ``.ome.zarr`` tree is one
  ``Dataset`` entity, not one entity per chunk. Check: re-loaded with ``ROCrate(OUT)``
  (warnings as errors), root metadata, one ``File`` per copied file, present, with its
  ``sha256``. (roc-validator 0.13 finds no REQUIRED issue for the RO-Crate 1.2/1.3
  profiles, nor for process-run-crate-0.5 apart from its RO-Crate 1.1 descriptor check.)
- ``bagit``: a BagIt bag (RFC 8493, https://www.rfc-editor.org/rfc/rfc8493) of a copy of
  the dataset made by ``bagit.make_bag(..., checksums=["sha256"])``. Check:
  ``bagit.Bag(OUT).validate()`` (every checksum recomputed) and the bag's
  ``manifest-sha256.txt`` equal to bidspack's manifest for every listed file.

Before any format reads the dataset, it is checked as untrusted input: a symbolic link
leading outside the dataset (a provenance record, README, any file or folder) or a
FIFO, socket or device stops the export (:func:`~bidspack.ops.export.copying.check_tree`),
and every provenance record must be UTF-8 JSON valid against
``specs/provenance.schema.json`` (:func:`~bidspack.ops.export.common.check_records`).

Both copies leave out ``.bidspack/`` and version control (``.git``, ``.datalad``,
``.gitattributes``, ``.gitignore``, ``.gitmodules``), follow symbolic links that stay
inside the dataset (git-annex files are copied with their content), copy ``.json`` and
``.tsv`` files only when they are UTF-8 (and valid JSON) and check every file's sha256
against the manifest
while copying: a file that is modified, missing or not listed stops the export (the
same findings as ``bidspack verify``). An ``.ome.zarr`` array's manifest row is checked
through its array digest (:mod:`bidspack.provenance.digests`).

The dataset is only read: it is never recovered, saved or changed. Its lock is held
while it is read (when it has a ``.bidspack/`` folder that can be written), and a
dataset with an unfinished transaction is refused. OUT must not exist or be an empty
folder (``prov-json``: must not exist) and must not lie inside DATASET. The export is
built next to OUT (``.<OUT name>.partial-<pid>-<random>``), validated there and then renamed
to OUT, so OUT never holds a partial or unvalidated export; on any error the partial
one is removed.

Modules: :mod:`~bidspack.ops.export.staging` (preconditions, the dataset lock, the staged
output), :mod:`~bidspack.ops.export.copying` (the copy and its check against the
manifest), :mod:`~bidspack.ops.export.common` (dataset description, README summary, small
helpers), one module per format: :mod:`~bidspack.ops.export.prov_json`,
:mod:`~bidspack.ops.export.ro_crate` and :mod:`~bidspack.ops.export.bag`; this package
holds :func:`export`, which runs them, and re-exports their public names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bidspack.errors import OutputError
from bidspack.ops.export.bag import check_bag, export_bag
from bidspack.ops.export.common import check_records, dataset_description, readme_summary
from bidspack.ops.export.copying import (
    EXCLUDED_NAMES,
    VERIFY_HINT,
    Copied,
    check_entry,
    check_tree,
    copy_dataset,
    crosscheck,
    dataset_files,
)
from bidspack.ops.export.prov_json import (
    PROV_NAMESPACES,
    build_prov,
    check_prov_json,
    export_prov,
    prov_counts,
)
from bidspack.ops.export.ro_crate import (
    PROCESS_RUN_CRATE,
    RO_CRATE_VERSION,
    build_ro_crate,
    check_ro_crate,
    export_ro_crate,
)
from bidspack.ops.export.staging import check_dataset, check_output, reading, staged_output
from bidspack.records import Record

__all__ = [
    "EXCLUDED_NAMES",
    "FORMATS",
    "PROCESS_RUN_CRATE",
    "PROV_NAMESPACES",
    "RO_CRATE_VERSION",
    "VERIFY_HINT",
    "Copied",
    "build_prov",
    "build_ro_crate",
    "check_bag",
    "check_dataset",
    "check_entry",
    "check_output",
    "check_prov_json",
    "check_records",
    "check_ro_crate",
    "check_tree",
    "copy_dataset",
    "crosscheck",
    "dataset_description",
    "dataset_files",
    "export",
    "prov_counts",
    "readme_summary",
    "staged_output",
]

FORMATS = ("prov-json", "ro-crate", "bagit")


def export(dataset: Path, out: Path, fmt: str) -> Iterator[Record]:
    """Export *dataset* to *out* in format *fmt* (see the package docstring); yield one
    record per stage (copy, write, validate).

    Raises:
        OutputError: *fmt* is unknown; *out* exists (and is not an empty folder) or lies
            inside *dataset*; *dataset* is locked by another process or has unfinished
            transactions.
        ValidationFailed: *dataset* is not a bidspack dataset (no
            ``dataset_description.json``, no manifest; for ``prov-json``: no records).
        IntegrityError: a file differs from the manifest, is missing or is not listed;
            or the written export does not pass its library's validator.
        UnsafeInputError: a symbolic link in *dataset* leads outside it, or an entry is
            a FIFO, socket or device (named; nothing is written).
        ValidationFailed: also a provenance record, ``dataset_description.json``, the
            manifest or a copied JSON/TSV file that is not UTF-8, not valid JSON or
            not valid against its schema (the file named; nothing is written).
    """
    dataset, out = Path(dataset), Path(out)
    if fmt not in FORMATS:
        raise OutputError(out, f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    folder = fmt != "prov-json"
    check_output(out, dataset, folder=folder)
    with reading(dataset):
        check_tree(dataset)
        rows = check_dataset(dataset)
        check_records(dataset)
        dataset_description(dataset)
        with staged_output(out, folder=folder) as tmp:
            if fmt == "prov-json":
                yield from export_prov(dataset, tmp, out)
            elif fmt == "ro-crate":
                yield from export_ro_crate(dataset, tmp, out, rows)
            else:
                yield from export_bag(dataset, tmp, out, rows)
    yield Record("export", str(out), "ok", f"{fmt} export written", {"format": fmt})
