"""Faults users cause with their data and predict's settings, each reproduced with real files and folders.

16-bit frames of one sensor, a decompression bomb (a PNG whose header claims 14000x14000) in a training folder,
an MVTec folder and a predict input, predict scoring nothing, normal and anomalous folders holding the same
images, and predict settings that are not numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.data.images import BadImageError, read_image
from anomaly_lab.errors import ConfigError, UserError
from anomaly_lab.predict import run
from tests.conftest import ComposeFn, compose_config
from tests.test_predict import ROOT, predict_config, read_rows

GIANT = re.escape("14000x14000 image (196000000 pixels) is larger than max_image_pixels=100000000")


def giant_png(path: Path) -> Path:
    """A PNG of 8x8 pixels whose header claims 14000x14000: a decompression bomb as a reader first sees it.

    The IHDR chunk follows the 8-byte signature: length (4), b"IHDR" (4), width and height (4 each) ...; its CRC
    over type and data (bytes 12:29) sits at 29:33. Nothing of 14000x14000 is ever allocated.
    """
    Image.new("RGB", (8, 8), (90, 120, 150)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 14000, 14000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def folder_config(compose_tiny: ComposeFn, normal: Path, abnormal: Path, *overrides: str) -> DictConfig:
    """dataset=folder over these folders, whole 32px images, as a user would pass them."""
    return compose_tiny(
        ["dataset=folder", f"dataset.normal_dir={normal}", f"dataset.abnormal_dir={abnormal}", *overrides]
    )


@pytest.fixture(scope="module")
def checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def good_image(tiny_run: Path) -> Path:
    """A test image the tiny run scored."""
    return Path(read_rows(tiny_run / "scores.csv")[0]["path"])


def predict_args(checkpoint: Path, inputs: Path, output: Path) -> list[str]:
    return [f"ckpt_path={checkpoint}", f"input={inputs}", f"output={output}"]


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ------------------------------------------------------------------------------------------------- 16-bit images


def test_16_bit_frames_of_one_sensor_scale_by_the_same_factor(tmp_path: Path) -> None:
    """A dark frame (max <= 255) and a bright one: both 8-bit pictures are v / 65535 * 255, whatever they hold."""
    dark = np.arange(256, dtype=np.uint16).reshape(16, 16)  # (16,16) 0..255
    bright = dark * 200  # (16,16) 0..51000; holds 200 too, as the dark frame does
    for name, frame in (("dark.png", dark), ("bright.png", bright)):
        Image.fromarray(frame).save(tmp_path / name)
        with Image.open(tmp_path / name) as saved:
            assert saved.mode == "I;16"
        eight_bit = read_image(tmp_path / name)  # (16,16,3) uint8
        np.testing.assert_allclose(eight_bit[..., 0], frame * 255.0 / 65535.0, atol=0.5)
        assert (eight_bit == eight_bit[..., :1]).all()
    dark_200 = read_image(tmp_path / "dark.png")[dark == 200]  # (1,3)
    bright_200 = read_image(tmp_path / "bright.png")[bright == 200]  # (1,3)
    np.testing.assert_array_equal(dark_200, bright_200)  # one sensor value, one 8-bit value


def test_32_bit_images_are_taken_as_16_bit_and_clipped(tmp_path: Path) -> None:
    frames = {
        "dark.tif": ([[0, 100, 255]], [[0, 0, 1]]),  # a dark frame is not stretched
        "clipped.tif": ([[-5, 0, 32768, 65535, 70000]], [[0, 0, 128, 255, 255]]),
    }
    for name, (values, expected) in frames.items():
        Image.fromarray(np.array(values, dtype=np.int32)).save(tmp_path / name)
        with Image.open(tmp_path / name) as saved:
            assert saved.mode == "I"
        np.testing.assert_array_equal(read_image(tmp_path / name, mode="L"), expected)


# ------------------------------------------------------------------------------------------- very large images


def test_a_giant_image_is_named_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    giant = giant_png(tmp_path / "giant.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor PIL's DecompressionBombWarning
        with pytest.raises(BadImageError, match=rf"giant\.png: {GIANT}"):
            read_image(giant)
    # our limit replaces PIL's own, which would refuse a 64x64 image (4096 pixels) above 2 x 1000 unnamed
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(tmp_path / "small.png", max_pixels=10_000).shape == (64, 64, 3)
    with pytest.raises(
        BadImageError, match=r"small\.png: 64x64 image \(4096 pixels\) is larger than max_image_pixels=100"
    ):
        read_image(tmp_path / "small.png", max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's setting is left as it was


def copy_folders(tiny_pages_root: Path, root: Path) -> Path:
    """The tiny pages' normal/, anomalous/ and masks/, writable."""
    shutil.copytree(tiny_pages_root, root, ignore=shutil.ignore_patterns(".complete"))
    return root


@pytest.mark.parametrize("skip", [False, True])
def test_a_giant_image_in_a_training_folder(
    compose_tiny: ComposeFn, tiny_pages_root: Path, tmp_path: Path, skip: bool
) -> None:
    root = copy_folders(tiny_pages_root, tmp_path / "pages")
    giant = giant_png(root / "normal" / "giant.png")
    masks, skip_bad_files = f"dataset.mask_dir={root / 'masks'}", f"dataset.skip_bad_files={str(skip).lower()}"
    module = instantiate(
        folder_config(compose_tiny, root / "normal", root / "anomalous", masks, skip_bad_files).dataset
    )
    if not skip:
        with pytest.raises(BadImageError, match=rf"giant\.png: {GIANT}"):
            module.setup()
        assert module.splits == {}
        return
    with pytest.warns(UserWarning, match=r"skipped 1 bad files:\n.*giant\.png: 14000x14000"):
        module.setup()
    used = {s.path for split in module.splits.values() for s in split.samples}
    assert str(giant) not in used and str(root / "normal" / "000.png") in used


@pytest.mark.parametrize("skip", [False, True])
def test_a_giant_image_in_an_mvtec_folder(
    compose_tiny: ComposeFn, tiny_bottles_root: Path, tmp_path: Path, skip: bool
) -> None:
    root = tmp_path / "bottles"
    shutil.copytree(tiny_bottles_root, root)
    giant = giant_png(root / "train" / "good" / "giant.png")
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={root}", f"dataset.skip_bad_files={str(skip).lower()}"])
    module = instantiate(cfg.dataset)
    if not skip:
        with pytest.raises(BadImageError, match=rf"giant\.png: {GIANT}"):
            module.setup()
        assert module.splits == {}
        return
    with pytest.warns(UserWarning, match=r"skipped 1 bad files:\n.*giant\.png"):
        module.setup()
    train = [s.path for s in module.splits["train"].samples + module.splits["val"].samples if s.label == 0]
    assert str(giant) not in train and len(train) == 8  # the 8 good training images, none lost


def test_every_dataset_config_has_the_pixel_limit_and_skip_switch() -> None:
    for path in sorted(Path(CONFIG_DIR, "dataset").glob("*.yaml")):
        dataset = compose_config([f"dataset={path.stem}", "paths.output_dir=x"]).dataset
        assert dataset.max_image_pixels == 100_000_000, path.name
        assert dataset.skip_bad_files is False, path.name


def test_predict_skips_a_giant_input_and_finishes(checkpoint: Path, good_image: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(good_image, inputs / "fine.png")
    giant_png(inputs / "giant.png")
    summary = run(predict_config(predict_args(checkpoint, inputs, tmp_path / "out")))
    assert summary["images"] == 1
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["giant.png"]
    assert "14000x14000" in summary["skipped"][0]["error"]
    assert {"scores.csv", "summary.json", "heatmaps", "masks"} <= set(names_in(tmp_path / "out"))
    assert names_in(tmp_path) == ["in", "out"]  # no staging folder left beside it


# ------------------------------------------------------------------------------------------------ scoring nothing


@pytest.mark.slow
def test_predict_scoring_nothing_is_an_error_and_leaves_nothing(
    checkpoint: Path, good_image: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"not a png")
    giant_png(inputs / "giant.png")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"nothing scored: 2 inputs, all skipped; first reason: .*broken\.png"):
        run(predict_config(predict_args(checkpoint, inputs, out)))
    assert names_in(tmp_path) == ["in"]  # no output folder, no staging folder
    with pytest.raises(UserError, match=r"nothing scored: 1 inputs, .*best\.ckpt: corrupt or unreadable image"):
        run(predict_config(predict_args(checkpoint, checkpoint, out)))
    (inputs / "broken.png").unlink()
    shutil.copy(good_image, inputs / "fine.png")  # 32x32, first of fine.png and giant.png
    with pytest.raises(
        UserError, match=re.escape("fine.png: 32x32 image (1024 pixels) is larger than max_image_pixels=1000")
    ):
        run(predict_config([*predict_args(checkpoint, inputs, out), "max_image_pixels=1000"]))
    assert names_in(tmp_path) == ["in"]
    assert run(predict_config(predict_args(checkpoint, inputs, out)))["images"] == 1  # a retry needs no overwrite


@pytest.mark.slow
def test_predict_cli_given_a_checkpoint_as_input_fails(checkpoint: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "anomaly_lab.predict", *predict_args(checkpoint, checkpoint, Path("out"))]
    done = subprocess.run([*command, "progress=false"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "nothing scored: 1 inputs, all skipped" in done.stderr
    assert names_in(tmp_path) == []


def test_predict_failing_at_the_end_keeps_the_existing_output(
    checkpoint: Path, good_image: Path, tmp_path: Path
) -> None:
    """overwrite=true into a folder where scores.csv is a folder: nothing is moved, nothing is left behind."""
    out = tmp_path / "out"
    (out / "scores.csv").mkdir(parents=True)
    (out / "scores.csv" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"scores\.csv cannot be written"):
        run(predict_config([*predict_args(checkpoint, good_image, out), "overwrite=true"]))
    assert names_in(tmp_path) == ["out"] and names_in(out) == ["scores.csv"]
    assert (out / "scores.csv" / "mine.txt").read_text() == "keep"


# ------------------------------------------------------------------------------- normal and anomalous overlapping


def test_one_folder_as_normal_and_anomalous_is_refused(
    compose_tiny: ComposeFn, tiny_pages_root: Path, tmp_path: Path
) -> None:
    normal = tiny_pages_root / "normal"
    (tmp_path / "link").symlink_to(normal, target_is_directory=True)
    for abnormal in (normal, tmp_path / "link", normal / ".." / "normal"):
        module = instantiate(folder_config(compose_tiny, normal, abnormal).dataset)
        with pytest.raises(ConfigError, match=r"dataset\.normal_dir=.* and dataset\.abnormal_dir=.* the same folder"):
            module.setup()


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_folders_sharing_files_through_links_are_refused(
    compose_tiny: ComposeFn, tiny_pages_root: Path, tmp_path: Path, link: str
) -> None:
    """A file linked into both folders, symbolically or hard (os.link: one inode, two names, no path to resolve)."""
    root = copy_folders(tiny_pages_root, tmp_path / "pages")
    normal_file, linked = root / "normal" / "002.png", root / "anomalous" / "linked.png"
    if link == "symbolic":
        linked.symlink_to(normal_file)
    else:
        os.link(normal_file, linked)
        assert not linked.is_symlink() and linked.resolve() != normal_file.resolve()
    module = instantiate(folder_config(compose_tiny, root / "normal", root / "anomalous").dataset)
    shared = r"share 1 image files through links \(symbolic or hard\), e\.g\. .*normal/002\.png and "
    with pytest.raises(ConfigError, match=rf"dataset\.normal_dir=.*{shared}.*anomalous/linked\.png are one file"):
        module.setup()
    assert module.splits == {}


# --------------------------------------------------------------------------------------------- predict settings


@pytest.mark.parametrize(
    ("setting", "allowed"),
    [
        ("score_threshold=abc", "a number, or null"),
        ("score_threshold=nan", "a number, or null"),
        ("pixel_threshold=abc", "a number, or null"),
        ("heatmap_max=abc", "a positive number, or null"),
        ("heatmap_max=-1", "a positive number, or null"),
        ("heatmap_alpha=2", "a number from 0 to 1"),
        ("batch_size=abc", "a positive whole number"),
        ("batch_size=0", "a positive whole number"),
        ("batch_size=2.5", "a positive whole number"),
        ("max_image_pixels=0", "a positive whole number or null"),
        ("overwrite=maybe", "true or false"),
        ("device=gpu", "auto, cpu, cuda or cuda:<index>"),
    ],
)
def test_predict_settings_are_checked_before_any_file(tmp_path: Path, setting: str, allowed: str) -> None:
    key = setting.split("=")[0]
    args = predict_args(tmp_path / "nowhere.ckpt", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ConfigError, match=rf"^{key}=.*{allowed}"):
        run(predict_config([*args, setting]))
    assert names_in(tmp_path) == []
