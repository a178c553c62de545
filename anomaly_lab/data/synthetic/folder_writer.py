"""Write-once cache folders: generated data is written into a staging folder and renamed into place,
so readers never see a half-written folder and a complete one is reused, not regenerated.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_atomically(root: Path, settings: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Run `write(staging)` into a temporary sibling folder, then rename it to `root`; return root.

    A half-written folder never appears at `root`; a `root` holding a `.complete` file (which
    records `settings`) is returned as it is. A non-empty `root` without `.complete` is not ours to
    overwrite: FileExistsError.
    """
    if (root / ".complete").is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists, is not empty and has no .complete marker; delete it to regenerate")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        write(staging)
        (staging / ".complete").write_text(json.dumps(settings, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        try:
            os.rename(staging, root)  # atomic; replaces an empty folder at root
        except OSError:
            if not (root / ".complete").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


# Page folders: normal/, anomalous/, masks/ (the layout FolderDataModule reads)

SceneMaker = Callable[[np.random.Generator, bool], tuple[np.ndarray, np.ndarray]]


def write_pages(
    root: Path, make: SceneMaker, n_normal: int, n_anomalous: int, seed: int, settings: dict[str, Any]
) -> Path:
    """Write root/normal/NNN.png, root/anomalous/NNN.png and root/masks/NNN_mask.png (0/255); return root.

    `make(rng, anomalous)` renders one scene. Page i of each folder is rendered from the generator
    seeded [seed, folder, i], so the same seed gives the same bytes; written atomically.
    """

    def write(staging: Path) -> None:
        for folder in ("normal", "anomalous", "masks"):
            (staging / folder).mkdir()
        for folder_id, (folder, count) in enumerate((("normal", n_normal), ("anomalous", n_anomalous))):
            for index in range(count):
                image, mask = make(np.random.default_rng([seed, folder_id, index]), folder == "anomalous")
                Image.fromarray(image).save(staging / folder / f"{index:03d}.png")
                if folder == "anomalous":
                    Image.fromarray(mask.astype(np.uint8) * 255).save(staging / "masks" / f"{index:03d}_mask.png")

    return write_atomically(
        Path(root), {**settings, "n_normal": n_normal, "n_anomalous": n_anomalous, "seed": seed}, write
    )
