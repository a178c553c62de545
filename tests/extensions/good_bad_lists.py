"""A dataset layout added from outside the package: one class that says which files it reads.

A folder (`lists`) holds good.txt and bad.txt, one image a line, relative to the folder; a line of bad.txt may
name the image's mask after a comma. Decoding, bad-file skipping and the splits are LayoutDataModule's; the YAML
option beside it is conf/dataset/good_bad_lists.yaml. `lists` is declared as the data's path, so sweeps of two
folders are two studies whatever the key is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_lab.data.datamodules import LayoutDataModule
from anomaly_lab.data.images import BadImageError, Sample


class GoodBadListsDataModule(LayoutDataModule):
    data_paths = ("lists",)

    def __init__(self, lists: str, **layout_args: Any) -> None:
        super().__init__(**layout_args)
        self.lists = Path(lists)

    def lines(self, name: str) -> list[str]:
        listing = self.lists / name
        if not listing.is_file():
            raise BadImageError(f"{listing}: not found (dataset.lists={self.lists} must hold good.txt and bad.txt)")
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]

    def list_files(self) -> tuple[list[Sample], list[Sample]]:
        good = [Sample(str(self.lists / line), 0, "good") for line in self.lines("good.txt")]
        bad = []
        for line in self.lines("bad.txt"):
            image, _, mask = (part.strip() for part in line.partition(","))
            bad.append(Sample(str(self.lists / image), 1, "bad", str(self.lists / mask) if mask else None))
        return good, bad
