"""Images listed in a CSV file: one row per image, columns `path`, `label` (0 normal, 1 anomalous), optional `mask`
(nonzero = anomaly) and `defect`, in any order (other columns are ignored).

Paths are relative to the CSV's folder, or absolute. An anomalous row without a mask counts as anomalous
everywhere (its mask is all ones); `defect` (empty: "anomalous") groups anomalous rows for the per-type share of
validation. Each image is resized to image_size (no tiling). Splits as dataset=folder: normal rows are split at
random, seeded, into train / validation / test (`val_fraction`, `test_fraction`); anomalous rows are held out, a
seeded `val_anomalous` share (of each defect) for validation and the rest for test.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from anomaly_lab.data.datamodules import LayoutDataModule
from anomaly_lab.data.images import BadImageError, Sample
from anomaly_lab.errors import ConfigError

COLUMNS = "path,label[,mask,defect]"


def listed_file(csv_path: Path, value: str | None, where: str) -> str:
    """The file a cell names, relative to the CSV's folder; BadImageError (naming row and column) if it is none."""
    if not (value or "").strip():
        raise BadImageError(f"{where}: empty")
    path = csv_path.parent / (value or "").strip()  # an absolute cell replaces the folder
    if not path.is_file():
        raise BadImageError(f"{where}: {path} not found")
    return str(path)


def read_csv_list(csv_path: Path) -> list[Sample]:
    """The samples a CSV file lists, checked row by row; rows are numbered as in a spreadsheet (the header is row 1)."""
    if not csv_path.is_file():
        raise ConfigError(f"dataset.csv={csv_path}: not found; point it at a CSV file with columns {COLUMNS}")
    samples: list[Sample] = []
    first_row: dict[str, int] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as file:  # utf-8-sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        for column in ("path", "label"):
            if column not in header:
                raise BadImageError(
                    f"{csv_path}, row 1: no column {column!r} (header: {','.join(header)}); expected {COLUMNS}"
                )
        for row in reader:
            where = f"{csv_path}, row {reader.line_num}, column"
            label = (row["label"] or "").strip()
            if label not in ("0", "1"):
                raise BadImageError(f"{where} label: {label!r} is not 0 (normal) or 1 (anomalous)")
            path = listed_file(csv_path, row["path"], f"{where} path")
            if path in first_row:
                raise BadImageError(f"{where} path: {path} is listed twice (first in row {first_row[path]})")
            first_row[path] = reader.line_num
            mask = listed_file(csv_path, row["mask"], f"{where} mask") if (row.get("mask") or "").strip() else None
            defect = ((row.get("defect") or "").strip() or "anomalous") if label == "1" else "good"
            samples.append(Sample(path, int(label), defect, mask))
    return samples


class CsvListDataModule(LayoutDataModule):
    """The images a CSV file lists (see the module docstring), each one sample resized to image_size. An error of
    the list itself (a column, a label, a missing file) stops even with skip_bad_files."""

    data_paths = ("csv",)

    def __init__(self, csv: str, **layout_args: Any) -> None:
        super().__init__(**layout_args)
        if self.preprocessing.tiled:
            raise ConfigError("dataset.preprocessing.tiled=true: dataset=csv_list reads whole images; use false")
        self.csv = Path(csv)

    def list_files(self) -> tuple[list[Sample], list[Sample]]:
        samples = read_csv_list(self.csv)
        return [s for s in samples if s.label == 0], [s for s in samples if s.label == 1]
