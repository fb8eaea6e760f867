"""Write the outputs of a hashdiff: CSV and Parquet tables, the JSON summary and a
self-contained HTML report (images embedded as PNG data URIs; opens offline).

Files (in the output folder):

- ``comparison_results.csv`` / ``.parquet``: every pair;
- ``different.csv`` / ``.parquet``: only the pairs that are not identical;
- ``summary.json``: counts and the differing pairs, valid against
  ``specs/hashdiff.schema.json``;
- ``report.html``: summary, the table of differing pairs with thumbnails of A and B
  and a difference map each, and the full pair table.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from bidspack.bids.tables import json_text
from bidspack.ops.hashdiff import HashDiff, PairResult

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
    "verdict",
    "n_diff",
    "frac_diff",
    "max_abs_diff",
    "labels_only_a",
    "labels_only_b",
    "nonzero_lost_frac",
    "nonzero_gained_frac",
)


def summary(diff: HashDiff) -> dict[str, Any]:
    """The JSON summary (``specs/hashdiff.schema.json``)."""
    return {
        "hashdiff_version": 1,
        "a": diff.a.name,
        "b": diff.b.name,
        "pixel_hash": "bidspack-pixelhash/1 xxh3-128",
        "verdict": "identical" if diff.identical else "different",
        "counts": diff.counts(),
        "pairs": len(diff.results),
        "different": [{k: getattr(r, k) for k in SUMMARY_PAIR_KEYS} for r in diff.different()],
        "files": dict(OUTPUT_FILES),
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("n_diff", "nonzero_a", "nonzero_b"):
        df[col] = df[col].astype("Int64")
    df["is_label"] = df["is_label"].astype("boolean")
    return df


def write_outputs(diff: HashDiff, out: Path) -> dict[str, Path]:
    """Write every output file into *out* (created); return name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in diff.results]
    diff_rows = [r.row() for r in diff.different()]
    paths = {k: out / v for k, v in OUTPUT_FILES.items()}
    for name, data in (("comparison_results", rows), ("different", diff_rows)):
        df = _frame(data)
        df.to_csv(paths[f"{name}_csv"], index=False, lineterminator="\n")
        df.to_parquet(paths[f"{name}_parquet"], index=False)
    paths["summary"].write_text(json_text(summary(diff)), encoding="utf-8")
    paths["report"].write_text(render_html(diff), encoding="utf-8")
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
    verdict = "identical" if diff.identical else "different"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hashdiff {e(diff.a.name)} vs {e(diff.b.name)}</title>",
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        f"<h1>Pixel-hash comparison: A = {e(diff.a.name)}, B = {e(diff.b.name)}</h1>",
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
            "Intensity images: |A-B| scaled to its maximum.</small></p>"
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
    """
    from bidspack.errors import OutputError
    from bidspack.ops.package import recover_records
    from bidspack.provenance.record import StepProvenance
    from bidspack.provenance.record import stage as stage_provenance
    from bidspack.txn import Transaction, dataset_lock

    dataset = Path(dataset)
    if not (dataset / "dataset_description.json").is_file():
        raise OutputError(dataset, "not a BIDS dataset (no dataset_description.json)")
    rel = f"code/bidspack/hashdiff/{diff.a.name}_vs_{diff.b.name}"
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
                    f"{diff.a.name}_vs_{diff.b.name}",
                    parameters={"a": diff.a.name, "b": diff.b.name, "counts": diff.counts()},
                ),
            )
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        from bidspack.provenance import datalad as dl

        if dl.is_datalad(dataset):
            dl.save(dataset, f"bidspack hashdiff: {diff.a.name} vs {diff.b.name}")
    return dataset / rel


def load_summary(path: Path) -> dict[str, Any]:
    """Read a summary.json (e.g. cited by a packaging spec)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
