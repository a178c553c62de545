"""Write the generated notes or sea pages into a folder, for commands that take folders (make tune):

    python -m anomaly_lab.data.synthetic notes data/notes_pages     # -> normal/, anomalous/, masks/
    python -m anomaly_lab.data.synthetic sharks data/sharks_pages

Why: experiment=notes_highlighter and experiment=sharks read their pages from a cache folder named by a digest of
the generator's settings (dataset=synthetic_notes / synthetic_sharks); `python -m anomaly_lab.tune` takes plain
folders. This writes the same pages (the dataset yaml's own write_pages: counts, sizes, seed; same seed, same bytes)
into a folder of your choosing, so a tuned recipe is tested on the tiles those recipes test. Extra key=value
arguments override write_pages (e.g. n_normal=12); an existing complete folder is kept as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from anomaly_lab.cli import USER_ERRORS, exit_for_user_error
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError

DATASETS = {"notes": "synthetic_notes", "sharks": "synthetic_sharks"}  # the scene -> its dataset option
USAGE = "python -m anomaly_lab.data.synthetic notes|sharks <folder> [write_pages key=value ...]"


def write(scene: str, folder: Path, overrides: Sequence[str] = ()) -> Path:
    """Write the dataset option's pages (its write_pages, with `overrides`) into folder; return folder."""
    if scene not in DATASETS:
        raise UserError(f"{scene!r}: the scene is one of {', '.join(DATASETS)} ({USAGE})")
    for override in overrides:
        if "=" not in override:
            raise UserError(f"{override!r}: extra arguments are write_pages key=value ({USAGE})")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"dataset={DATASETS[scene]}", *(f"dataset.write_pages.{item}" for item in overrides)],
        )
    write_pages = instantiate(cfg.dataset.write_pages)  # a partial of write_notes_pages / write_sea_pages
    return Path(write_pages(folder))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) < 2:
            raise UserError(f"a scene and a folder are needed: {USAGE}")
        root = write(args[0], Path(args[1]).expanduser().resolve(), args[2:])
    except (*USER_ERRORS, FileExistsError) as error:
        exit_for_user_error(error)
    print(f"{root}: normal/ anomalous/ masks/; e.g.")
    print(
        f"  python -m anomaly_lab.tune data={root}/normal defects={root}/anomalous masks={root}/masks tiled=true "
        "minutes=15"
    )


if __name__ == "__main__":
    main()
