"""report.html: the page predict writes beside scores.csv, for an operator to look through the results.

One HTML file with its CSS and JavaScript inline (no server, no CDN, no external script or font), so it opens
offline from a file share or a copied output folder. It lists the images sorted by score, highest first, with
their verdict and thumbnails of the image, heatmap and mask; a threshold slider (over the scores, starting at the
threshold predict used) recounts the verdicts live; filters by folder (the input's sub-folder) and by verdict;
summary counts; and, where the truth is known from the folder names, the confusion counts at the slider's
threshold and the ROC curve with its AUROC (inline SVG drawn by the page's script).

Thumbnails (at most THUMBNAIL_SIZE px a side: the image and heatmap as JPEG, the mask as PNG) are files under
`thumbnails/` beside the page, referenced by relative links, rather than base64 data in the page: a page of
thousands of images stays a few hundred bytes per image (its data parses at once), the browser decodes only the
thumbnails of the rows it shows (rows are added 100 at a time as one scrolls, images load lazily), and the page
still opens from a copy of the output folder, where its heatmaps and masks (linked from the thumbnails) are too.

Truth from folder names (case-insensitive), the nearest folder first, among the folders between the input root
and the file plus the input folder's own name and its parent's (so that `input=.../test/crack` is read too):
- a folder named `good` or `normal`: normal;
- a folder named `anomaly`, `anomalous`, `defect` or `bad`: anomalous;
- a folder directly inside a folder named `test` (MVTec's `test/<defect>`; `test/good` is normal by the first
  rule): anomalous;
- none of these: unknown. The confusion counts and the ROC curve use the images whose truth is known; the ROC
  curve needs both kinds among them.
An image is anomalous at threshold t when its score >= t, as in predict.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from PIL import Image

from anomaly_lab.data.images import BadImageError, read_image
from anomaly_lab.predict_outputs import output_name

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
THUMBNAIL_FOLDER = "thumbnails"
THUMBNAIL_SIZE = 128  # px, the longer side
JPEG_QUALITY = 80
NORMAL_FOLDERS = frozenset({"good", "normal"})
ANOMALOUS_FOLDERS = frozenset({"anomaly", "anomalous", "defect", "bad"})
MVTEC_TEST_FOLDER = "test"
TEMPLATE = "report_page.html"  # package data beside this module
DATA_MARKER = "__REPORT_DATA__"
TITLE_MARKER = "__REPORT_TITLE__"


def truth_from_folders(folders: Sequence[str]) -> int | None:
    """1 (anomalous), 0 (normal) or None (unknown) from folder names, the file's own folder first, then upwards
    (the module docstring gives the rule)."""
    names = [name.lower() for name in folders]
    for index, name in enumerate(names):
        if name in NORMAL_FOLDERS:
            return 0
        if name in ANOMALOUS_FOLDERS:
            return 1
        if index + 1 < len(names) and names[index + 1] == MVTEC_TEST_FOLDER:
            return 1
    return None


def folders_of(path: Path, root: Path) -> tuple[PurePosixPath, list[str]]:
    """An input's path below root (posix) and the folder names the truth is read from, nearest first: those
    between root and the file, then root's own name and its parent's."""
    relative = PurePosixPath(Path(os.path.relpath(path.absolute(), root.absolute())).as_posix())
    absolute_root = Path(os.path.abspath(root))
    above = [absolute_root.name, absolute_root.parent.name]
    return relative, [*reversed(relative.parent.parts), *(name for name in above if name)]


def url(relative: PurePosixPath | str) -> str:
    """A relative link to a file of the output folder, percent-encoded (names may hold spaces, '#', '?')."""
    return quote(str(PurePosixPath(relative)), safe="/")


def json_score(score: float) -> float | str:
    """A score as JSON: a number, or "NaN" / "Infinity" / "-Infinity" (the page's Number() reads those)."""
    if math.isfinite(score):
        return score
    return "NaN" if math.isnan(score) else ("Infinity" if score > 0 else "-Infinity")


def sort_key(entry: dict[str, Any]) -> tuple[float, str]:
    """Highest score first, NaN last, ties by name."""
    score = float(entry["score"])
    return (math.inf if math.isnan(score) else -score, entry["name"])


def report_entries(rows: Sequence[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """The page's image list from predict's rows (path, score, heatmap, mask): sorted, with folder, truth and
    the output-relative names of the thumbnails (not yet made) and of the full-size heatmap and mask."""
    entries = []
    for row in rows:
        path = Path(row["path"])
        relative, folders = folders_of(path, root)
        name = PurePosixPath(output_name(path, root).as_posix())  # as heatmaps/ and masks/ name it
        thumbs = {
            kind: PurePosixPath(THUMBNAIL_FOLDER, kind, f"{name}.{suffix}")
            for kind, suffix in (("image", "jpg"), ("heatmap", "jpg"), ("mask", "png"))
        }
        entries.append(
            {
                "name": str(relative),
                "folder": str(relative.parent) if relative.parent != PurePosixPath(".") else "",
                "score": float(row["score"]),
                "truth": truth_from_folders(folders),
                "source": path,
                "heatmap": row.get("heatmap"),
                "mask": row.get("mask"),
                "thumbs": thumbs,
            }
        )
    return sorted(entries, key=sort_key)


def _thumbnail(image: Image.Image, resample: Image.Resampling) -> Image.Image:
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), resample)
    return image


def make_thumbnails(entry: dict[str, Any], output: Path) -> tuple[dict[str, str | None], tuple[int, int] | None]:
    """Write an entry's three thumbnails under output; their links (None where the source cannot be read, which
    is logged) and the image thumbnail's (width, height)."""
    links: dict[str, str | None] = {}
    size = None
    for kind, target in entry["thumbs"].items():
        source = entry["source"] if kind == "image" else entry[kind] and output / entry[kind]
        if source is None:
            links[kind] = None
            continue
        try:
            if kind == "image":
                array = read_image(Path(source), max_pixels=None)  # (H,W,3) uint8, as predict read it
                picture = _thumbnail(Image.fromarray(array), Image.Resampling.BICUBIC)
                size = picture.size
            else:
                with Image.open(source) as opened:
                    mode, resample = ("RGB", Image.Resampling.BICUBIC)
                    if kind == "mask":  # box averages: a defect of one pixel stays a grey dot
                        mode, resample = ("L", Image.Resampling.BOX)
                    picture = _thumbnail(opened.convert(mode), resample)
                size = size or picture.size
        except (BadImageError, OSError) as error:
            log.warning("report.html: no %s thumbnail of %s (%s)", kind, entry["source"], error)
            links[kind] = None
            continue
        (output / target).parent.mkdir(parents=True, exist_ok=True)
        if target.suffix == ".jpg":
            picture.save(output / target, quality=JPEG_QUALITY)
        else:
            picture.save(output / target, optimize=True)
        links[kind] = url(target)
    return links, size


def page_data(
    entries: Sequence[dict[str, Any]],
    thumbnails: Sequence[tuple[dict[str, str | None], tuple[int, int] | None]],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """What the page's script gets: predict's settings and one record per image, in entries' order."""
    images = []
    for entry, (links, size) in zip(entries, thumbnails, strict=True):
        images.append(
            {
                "name": entry["name"],
                "folder": entry["folder"],
                "score": json_score(entry["score"]),
                "truth": entry["truth"],
                "thumbs": links,
                "size": list(size) if size is not None else None,
                "links": {
                    "image": Path(os.path.abspath(entry["source"])).as_uri(),
                    "heatmap": url(entry["heatmap"]) if entry["heatmap"] else None,
                    "mask": url(entry["mask"]) if entry["mask"] else None,
                },
            }
        )
    threshold = float(summary["threshold"])
    return {
        "threshold": threshold,
        "threshold_from": summary.get("threshold_from"),
        "pixel_threshold": summary.get("pixel_threshold"),
        "checkpoint": str(summary.get("checkpoint", "")),
        "input": str(summary.get("input", "")),
        "written": datetime.now().astimezone().isoformat(timespec="seconds"),
        "skipped": list(summary.get("skipped", [])),
        "images": images,
    }


def embedded_json(data: dict[str, Any]) -> str:
    """data as JSON safe inside a <script> element: '<', '>' and '&' escaped, so no name can close it."""
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(data: dict[str, Any], title: str) -> str:
    """The report's HTML: the template with data and title filled in."""
    template = resources.files("anomaly_lab").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.replace(TITLE_MARKER, html.escape(title)).replace(DATA_MARKER, embedded_json(data))


def write_report(output: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any], root: Path) -> Path:
    """Write report.html and its thumbnails/ into output (predict's staging folder, heatmaps and masks written);
    rows as predict's (path, score, heatmap, mask), root the folder their names are relative to."""
    started = time.perf_counter()
    entries = report_entries(rows, root)
    workers = max(1, min(4, os.cpu_count() or 1))  # PIL decodes and encodes without the GIL
    with ThreadPoolExecutor(workers) as pool:
        thumbnails = list(pool.map(lambda entry: make_thumbnails(entry, output), entries))
    data = page_data(entries, thumbnails, summary)
    title = f"anomaly_lab predict: {summary.get('input', '')}"
    path = output / REPORT_NAME
    path.write_text(render_page(data, title), encoding="utf-8")
    known = sum(entry["truth"] is not None for entry in entries)
    log.info(
        "report.html: %d images (truth from folder names for %d), thumbnails in %.1f s",
        len(entries),
        known,
        time.perf_counter() - started,
    )
    return path
