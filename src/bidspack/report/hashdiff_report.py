"""Write the outputs of a hashdiff: CSV and Parquet tables, the JSON summary and a
self-contained HTML report (images embedded as PNG data URIs; opens offline).

Files (in the output folder):

- ``comparison_results.csv`` / ``.parquet``: every pair;
- ``different.csv`` / ``.parquet``: only the pairs that are not identical;
- ``summary.json``: counts and the differing pairs, valid against
  ``specs/hashdiff.schema.json``;
- ``report.html``: summary, the table of differing pairs with thumbnails of A and B
  and a difference map each (a yellow box around each changed region, so one changed
  voxel is visible), and the full pair table.

Output file names are fixed (above); pair names and paths from the compared folders
appear only inside the files (CSV cells, JSON strings, HTML-escaped text), and the
difference maps are embedded in the HTML, never written as files of their own. Each
file is written beside its final name and renamed into place (a symbolic link planted
at an output name is replaced, not followed). The folder kept in a dataset
(:func:`keep_in_dataset`) is checked to stay inside the dataset.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bidspack.bids.tables import json_text
from bidspack.errors import UnsafeInputError
from bidspack.ops.hashdiff import HashDiff, PairResult
from bidspack.safety import check_relpath, inside

COLUMNS = list(PairResult("", "unreadable", None, None).row())
OUTPUT_FILES = {
    "comparison_results_csv": "comparison_results.csv",
    "comparison_results_parquet": "comparison_results.parquet",
    "different_csv": "different.csv",
    "different_parquet": "different.parquet",
    "summary": "summary.json",
    "report": "report.html",
}
SUMMARY_PAIR_KEYS = (
    "key",
    "status",
    "a_path",
    "b_path",
    "a_kind",
    "b_kind",
    "verdict",
    "n_diff",
    "n_pixels",
    "frac_diff",
    "max_abs_diff",
    "labels_only_a",
    "labels_only_b",
    "nonzero_a",
    "nonzero_lost",
    "nonzero_gained",
    "nonzero_lost_frac",
    "nonzero_gained_frac",
)


def summary(diff: HashDiff) -> dict[str, Any]:
    """The JSON summary (``specs/hashdiff.schema.json``)."""
    return {
        "hashdiff_version": 1,
        "a": diff.a_name,
        "b": diff.b_name,
        "pixel_hash": "bidspack-pixelhash/1 xxh3-128",
        "verdict": diff.verdict,
        "counts": diff.counts(),
        "pairs": len(diff.results),
        "different": [{k: getattr(r, k) for k in SUMMARY_PAIR_KEYS} for r in diff.different()],
        "files": dict(OUTPUT_FILES),
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("n_diff", "n_pixels", "nonzero_a", "nonzero_b", "nonzero_lost", "nonzero_gained"):
        df[col] = df[col].astype("Int64")
    df["is_label"] = df["is_label"].astype("boolean")
    return df


def write_outputs(diff: HashDiff, out: Path) -> dict[str, Path]:
    """Write every output file into *out* (created); return name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in diff.results]
    diff_rows = [r.row() for r in diff.different()]
    paths = {k: out / v for k, v in OUTPUT_FILES.items()}

    def put(key: str, write: Callable[[Path], object]) -> None:
        tmp = out / f".{paths[key].name}.part"
        tmp.unlink(missing_ok=True)
        write(tmp)
        os.replace(tmp, paths[key])

    for name, data in (("comparison_results", rows), ("different", diff_rows)):
        df = _frame(data)
        put(f"{name}_csv", functools.partial(df.to_csv, index=False, lineterminator="\n"))
        put(f"{name}_parquet", functools.partial(df.to_parquet, index=False))
    put("summary", lambda p: p.write_text(json_text(summary(diff)), encoding="utf-8"))
    put("report", lambda p: p.write_text(render_html(diff), encoding="utf-8"))
    return paths


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return '<span class="none">-</span>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:.85em;vertical-align:top}
th{background:#eee} .s-different_pixels,.s-unreadable{background:#fdd}
.s-skipped{background:#eee}
.s-only_in_a,.s-only_in_b{background:#ffd} .s-identical_pixels{background:#eef}
img{image-rendering:pixelated;max-width:256px;border:1px solid #999}
.verdict{font-weight:600} .none{color:#999}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
  var rows = document.querySelectorAll('#pairs tbody tr').length;
  document.body.setAttribute('data-rows', String(rows));
});
"""


def render_html(diff: HashDiff) -> str:
    """The self-contained HTML report (no external resources)."""
    e = html.escape
    counts = diff.counts()
    verdict = diff.verdict
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hashdiff {e(diff.a_name)} vs {e(diff.b_name)}</title>",
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        f"<h1>Pixel-hash comparison: A = {e(diff.a_name)}, B = {e(diff.b_name)}</h1>",
        f"<p class='verdict' id='verdict'>Verdict: {verdict} ({len(diff.results)} pairs)</p>",
        "<table id='counts'><tr>"
        + "".join(f"<th>{e(k)}</th>" for k in counts)
        + "</tr><tr>"
        + "".join(f"<td>{v}</td>" for v in counts.values())
        + "</tr></table>",
    ]
    different = diff.different()
    if different:
        parts.append(
            "<h2>Differing pairs</h2><table id='different'><thead><tr><th>pair</th>"
            "<th>status</th><th>verdict</th><th>A</th><th>B</th><th>difference"
            "</th></tr></thead><tbody>"
        )
        for r in different:
            p = r.previews
            parts.append(
                f"<tr class='s-{r.status}'><td>{e(r.key)}<br><small>A: {e(r.a_path or '-')}"
                f"<br>B: {e(r.b_path or '-')}</small></td><td>{e(r.status)}</td>"
                f"<td>{e(r.verdict)}</td><td>{_img(p.get('a'), 'A ' + r.key)}</td>"
                f"<td>{_img(p.get('b'), 'B ' + r.key)}</td>"
                f"<td>{_img(p.get('diff'), 'difference ' + r.key)}</td></tr>"
            )
        parts.append(
            "</tbody></table><p><small>Difference maps: red = labelled in A, "
            "lost or changed in B; green = gained in B; grey = unchanged labels. "
            "Intensity images: |A-B| scaled to its maximum (any difference at least "
            "dark grey). A yellow box surrounds each changed region, however small. "
            "Skipped: symbolic links, FIFOs, sockets and devices, never opened."
            "</small></p>"
        )
    parts.append(
        "<h2>All pairs</h2><table id='pairs'><thead><tr><th>pair</th><th>status</th>"
        "<th>A</th><th>B</th><th>pixel hash A</th><th>pixel hash B</th>"
        "<th>verdict</th></tr></thead><tbody>"
    )
    for r in diff.results:
        parts.append(
            f"<tr class='s-{r.status}'><td>{e(r.key)}</td><td>{e(r.status)}</td>"
            f"<td>{e(r.a_path or '-')}</td><td>{e(r.b_path or '-')}</td>"
            f"<td><code>{e(r.a_pixel_hash or '-')}</code></td>"
            f"<td><code>{e(r.b_pixel_hash or '-')}</code></td><td>{e(r.verdict)}</td></tr>"
        )
    parts.append("</tbody></table></body></html>\n")
    return "\n".join(parts)


def keep_in_dataset(diff: HashDiff, dataset: Path) -> Path:
    """Write the outputs into *dataset* under ``code/bidspack/hashdiff/<A>_vs_<B>/`` as
    one transaction (replacing an earlier report of the same pair); return that folder.

    Raises:
        OutputError: *dataset* is not a BIDS dataset, or is locked by another process.
        UnsafeInputError: the folder name (from A's and B's names) has a control
            character or would not stay inside *dataset*.
    """
    from bidspack.errors import OutputError
    from bidspack.ops.session import recover_records
    from bidspack.provenance.record import StepProvenance
    from bidspack.provenance.record import stage as stage_provenance
    from bidspack.txn import Transaction, dataset_lock

    dataset = Path(dataset)
    if not (dataset / "dataset_description.json").is_file():
        raise OutputError(dataset, "not a BIDS dataset (no dataset_description.json)")
    pair = f"{diff.a_name}_vs_{diff.b_name}"
    rel = check_relpath(
        f"code/bidspack/hashdiff/{pair}", what="hashdiff report folder", origin=dataset
    )
    if "/" in pair or rel != f"code/bidspack/hashdiff/{pair}":
        raise UnsafeInputError(dataset, f"hashdiff report folder name {pair!r} is not one name")
    inside(dataset, rel, what="hashdiff report folder", origin=dataset)
    with dataset_lock(dataset):
        list(recover_records(dataset))
        txn = Transaction(dataset)
        try:
            written = write_outputs(diff, txn.workdir() / "report")
            for path in written.values():  # one put (or replace) per file
                os.replace(path, txn.stage_path(f"{rel}/{path.name}"))
            stage_provenance(
                txn,
                StepProvenance(
                    "hashdiff",
                    pair,
                    parameters={"a": diff.a_name, "b": diff.b_name, "counts": diff.counts()},
                ),
            )
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        from bidspack.provenance import datalad as dl

        if dl.is_datalad(dataset):
            dl.save(dataset, f"bidspack hashdiff: {diff.a_name} vs {diff.b_name}")
    return dataset / rel


def load_summary(path: Path) -> dict[str, Any]:
    """Read a summary.json (e.g. cited by a packaging spec), validated against
    ``specs/hashdiff.schema.json`` (untrusted input: names of A and B are single path
    components, output file names plain names).

    Raises:
        UnsafeInputError: unreadable JSON or not a valid hashdiff summary.
    """
    import jsonschema

    from bidspack.spec import load_schema

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnsafeInputError(path, f"cannot read hashdiff summary ({exc})") from exc
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(load_schema("hashdiff")).iter_errors(data)
    )
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        raise UnsafeInputError(path, f"not a valid hashdiff summary: {where}: {error.message}")
    return data
