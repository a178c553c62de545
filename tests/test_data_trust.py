"""Data that misled or exhausted the framework (issue 29), each reproduced with real crafted files: a 98-megapixel
PNG of 450 KB, blank, nearly black and 16-bit images of small values, a file hard-linked into the normal and the
anomalous folder, a folder too small for the split fractions, real validation anomalies asked of data without any.

Memory is measured as the peak resident set of the real process (ru_maxrss of a child), which does not depend on
the machine's load.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image, ImageDraw

from anomaly_lab.data.datamodules import normal_images_needed, too_few_normal
from anomaly_lab.data.images import (
    BadImageError,
    faint_content,
    read_image,
    read_mask,
    reduced_size,
)
from anomaly_lab.errors import SplitError
from anomaly_lab.predict import run as predict
from anomaly_lab.preprocessing import REDUCE_ABOVE_PIXELS, Preprocessing
from anomaly_lab.train import check_splits
from tests.conftest import TINY, ComposeFn
from tests.test_predict import predict_config, read_rows

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
# A child process's peak resident memory in bytes (Linux: ru_maxrss in KiB), printed as its last line on stderr.
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(done.returncode)\n"
)


def measured(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run command as a user would (its own process) and return it with its peak resident memory in bytes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    return done, int(done.stderr.strip().splitlines()[-1])


def flat_page(path: Path, side: int) -> Path:
    """A side x side RGB PNG, mostly one colour with a few shapes: small on disk, side**2 pixels decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (side, side), (120, 130, 140))
    draw = ImageDraw.Draw(image)
    for at in range(0, side, side // 10):
        draw.ellipse((at, at, at + side // 8, at + side // 8), fill=(200, 60, 40))
        draw.line((0, at, side, side - at), fill=(10, 10, 10), width=9)
    image.save(path)
    return path


def smooth_picture(width: int, height: int) -> Image.Image:
    """A gradient with shapes and lines: what a photo holds, rather than noise that averages to grey."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for at in range(0, width, width // 10):
        draw.ellipse((at, at * 0.7, at + width // 8, at * 0.7 + height // 9), fill=(200, 60, 40))
        draw.line((0, at, width, height - at), fill=(10, 10, 10), width=15)
    return image


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "anomaly_lab.train", *TINY, *overrides]


def user_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line of a user error (exit code 2), the line before the peak-memory line."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr.strip().splitlines()[-2]


@pytest.fixture(scope="module")
def checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "best.ckpt"


def textured_folder(folder: Path, count: int, side: int = 64) -> Path:
    """count RGB images of noise around mid-grey: plenty to learn from."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(60, 200, (side, side, 3), dtype=np.uint8)  # (side,side,3)
        Image.fromarray(pixels).save(folder / f"textured_{index}.png")
    return folder


# ------------------------------------------------------------------------------- 6. large files, bounded memory


def test_decode_factors_keep_three_times_the_model_side_and_leave_small_files_alone() -> None:
    whole = Preprocessing(image_size=128)
    assert whole.decode_factors(2048, 2048) == (1, 1)  # 4 MP or less: decoded as it is (every MVTec AD image)
    assert whole.decode_factors(9900, 9900) == (25, 25)  # 396 px: at least 3 x 128
    assert whole.decode_factors(9900, 2100) == (25, 5)  # each side its own: the square resize ignores the aspect
    # orient finds the pose on the decoded image: the aspect is kept
    assert Preprocessing(image_size=128, orient="principal_axis").decode_factors(9900, 2100) == (5, 5)
    assert Preprocessing(image_size=32, tiled=True).decode_factors(9900, 9900) == (1, 1)  # tiles at the page's pixels
    assert Preprocessing(image_size=32, tiled=True, page_width=1000).decode_factors(9900, 9900) == (3, 3)


def test_a_large_file_is_decoded_reduced_and_prepared_as_the_whole_file_would_be(tmp_path: Path) -> None:
    """2400x1800 (4.3 MP) for a 64 px model: Image.reduce by (12, 9) to 200x200, then prepared as ever; against the
    whole file prepared the old way, the model's input differs by under a grey level on average."""
    picture = smooth_picture(2400, 1800)
    picture.save(tmp_path / "large.png", compress_level=1)
    preprocessing = Preprocessing(image_size=64)
    loaded = preprocessing.load(tmp_path / "large.png")
    image = loaded.decoded  # (200,200,3)
    assert loaded.file_size == (2400, 1800) and image.shape == (200, 200, 3)
    np.testing.assert_array_equal(image, np.asarray(picture.reduce((12, 9))))
    whole = read_image(tmp_path / "large.png")  # (1800,2400,3)
    reduced_input, whole_input = preprocessing.prepare(image).image, preprocessing.prepare(whole).image  # (64,64,3)
    difference = np.abs(reduced_input.astype(np.float64) - whole_input)
    assert difference.mean() < 1.0 and difference.max() <= 8
    # its mask is taken at that size too, nearest (a mask stays 0 or 255)
    mask = Image.new("L", (2400, 1800))
    ImageDraw.Draw(mask).rectangle((1200, 900, 1500, 1100), fill=255)
    mask.save(tmp_path / "large_mask.png")
    reduced_mask = read_mask(tmp_path / "large_mask.png", tmp_path / "large.png", reduce_for=preprocessing)
    assert reduced_mask.shape == (200, 200) and reduced_mask[100:122, 100:125].all() and reduced_mask.sum() < 30 * 26
    # a file of at most 4 MP is decoded whole, exactly as without reduce_for
    picture.crop((0, 0, 2048, 2048)).save(tmp_path / "at_the_line.png", compress_level=1)
    assert REDUCE_ABOVE_PIXELS == 2048 * 2048
    np.testing.assert_array_equal(
        read_image(tmp_path / "at_the_line.png", reduce_for=preprocessing),
        read_image(tmp_path / "at_the_line.png"),
    )


@pytest.mark.parametrize("mode", ["I;16", "P", "RGBA", "JPEG"])
def test_large_files_of_other_modes_reduce_to_the_same_picture(tmp_path: Path, mode: str) -> None:
    """16-bit (scaled to 8 bits first), palette (colours averaged, not indices), RGBA (on white) and JPEG (libjpeg's
    own 1/2-1/8 scaling, then boxes): each reduced file shows what the whole file shows."""
    picture = smooth_picture(2400, 1800)
    path = tmp_path / ("large.jpg" if mode == "JPEG" else "large.png")
    if mode == "I;16":
        Image.fromarray(np.asarray(picture.convert("L")).astype(np.uint16) * 257).save(path)  # 8-bit v -> v * 257
    elif mode == "P":
        picture.quantize(64).save(path)
    elif mode == "RGBA":
        rgba = picture.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path)
    else:
        picture.save(path, quality=95)
    preprocessing = Preprocessing(image_size=64)
    loaded = preprocessing.load(path)
    image = loaded.decoded  # (200,200,3)
    assert loaded.file_size == (2400, 1800) and image.shape == (200, 200, 3)
    reduced_input = preprocessing.prepare(image).image.astype(np.float64)  # (64,64,3)
    whole_input = preprocessing.prepare(read_image(path)).image  # (64,64,3)
    assert np.abs(reduced_input - whole_input).mean() < 1.5


@pytest.mark.slow
def test_predict_on_a_98_megapixel_png_stays_under_2_gib(checkpoint: Path, tmp_path: Path) -> None:
    """The issue's file: 9900x9900, under the default max_image_pixels. Before: 11.2 GB resident for this one file."""
    page = flat_page(tmp_path / "in" / "page.png", 9900)
    assert page.stat().st_size < 2_000_000  # small on disk
    out = tmp_path / "out"
    command = [sys.executable, "-m", "anomaly_lab.predict", f"ckpt_path={checkpoint}", f"input={page}"]
    done, peak = measured([*command, f"output={out}", "progress=false"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert peak < 2 * GIB, f"predict's peak resident memory {peak / GIB:.2f} GiB"
    decoded = reduced_size(9900, 9900, Preprocessing(image_size=32).decode_factors(9900, 9900))  # 97x97
    assert "page.png: a 9900x9900 file, decoded at 97x97 (the model sees 32 px)" in done.stdout
    row = read_rows(out / "scores.csv")[0]
    for output in ("heatmap", "mask"):
        with Image.open(out / row[output]) as written:
            assert written.size == decoded


@pytest.mark.slow
def test_training_on_a_98_megapixel_png_costs_its_decoding_only(tmp_path: Path) -> None:
    """A folder of 5 small images and the 98 MP page against the 5 small images and a sixth small one: the page
    adds its decoding (300 MB as RGB) to training's peak, no float copies of it (before: 1.25 GB more, 1.89 GB in
    all), and training stays under 2 GiB."""
    small, large = textured_folder(tmp_path / "small", 6), tmp_path / "large"
    shutil.copytree(small, large, ignore=shutil.ignore_patterns("textured_5.png"))
    flat_page(large / "page.png", 9900)
    peaks = {}
    for name, folder in (("small", small), ("large", large)):
        settings = [f"dataset.normal_dir={folder}", "dataset.abnormal_dir=null", "validation_anomalies=synthetic"]
        done, peaks[name] = measured(
            train_command("dataset=folder", *settings, f"hydra.run.dir={tmp_path / name / 'run'}"), tmp_path
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert peaks["large"] < 2 * GIB, f"training's peak resident memory {peaks['large'] / GIB:.2f} GiB"
    assert peaks["large"] - peaks["small"] < 600 * 2**20, f"{(peaks['large'] - peaks['small']) / 2**20:.0f} MiB more"


# ------------------------------------------------------------------------- 9. blank and nearly black images


def test_faint_content_names_blank_and_nearly_black_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    assert faint_content(rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)) is None
    assert faint_content(np.zeros((32, 32, 3), np.uint8)) == "near-constant (every pixel about 0/255)"
    assert faint_content(np.full((32, 32, 3), 255, np.uint8)) == "near-constant (every pixel about 255/255)"
    # a 16-bit frame of small values (0 and 2000 of 65535) decodes to 0 and 8: structure, but nearly black
    frame = np.zeros((64, 64), np.uint16)
    frame[:, 32:] = 2000
    Image.fromarray(frame).save(tmp_path / "dark16.png")
    expected = "near-black (99% of its pixels at or below 8/255)"
    assert faint_content(read_image(tmp_path / "dark16.png")) == expected
    # 32-bit integers (taken as 16-bit) and floats in [0, 1] (cut to 0 or 1): nearly black too
    Image.fromarray(frame.astype(np.int32)).save(tmp_path / "dark32.tif")
    assert faint_content(read_image(tmp_path / "dark32.tif")) == expected
    Image.fromarray(rng.random((64, 64), dtype=np.float32)).save(tmp_path / "float.tif")
    assert str(faint_content(read_image(tmp_path / "float.tif"))).startswith("near-constant (every pixel about")
    # tiles of one page are judged together: a white margin tile is no blank page
    page = np.full((2, 32, 32, 3), 255, np.uint8)  # (N,H,W,3)
    page[1] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert faint_content(page) is None


def test_blank_and_dark_training_images_are_named_in_one_warning(
    compose_tiny: ComposeFn, tiny_pages_root: Path, tmp_path: Path
) -> None:
    normal = tmp_path / "normal"
    shutil.copytree(tiny_pages_root / "normal", normal)
    Image.new("RGB", (96, 96), (0, 0, 0)).save(normal / "black.png")
    Image.new("RGB", (96, 96), (255, 255, 255)).save(normal / "white.png")
    frame = np.zeros((96, 96), np.uint16)
    frame[:, 48:] = 1500  # 16-bit, small values: 6/255 once scaled
    Image.fromarray(frame).save(normal / "sensor.png")
    overrides = ["dataset=folder", f"dataset.normal_dir={normal}", "dataset.abnormal_dir=null"]
    module = instantiate(compose_tiny(overrides).dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup()
    faint = [str(w.message) for w in caught if "near-constant or near-black" in str(w.message)]
    assert len(faint) == 1, [str(w.message) for w in caught]
    lines = faint[0].splitlines()
    assert lines[0].startswith("3 of 7 images are near-constant or near-black")
    assert sorted(Path(line.split(": ")[0]).name for line in lines[1:4]) == ["black.png", "sensor.png", "white.png"]
    assert "black.png: near-constant (every pixel about 0/255)" in faint[0]
    assert "white.png: near-constant (every pixel about 255/255)" in faint[0]
    assert "sensor.png: near-black" in faint[0]
    assert lines[4].startswith("What to do: a 16-bit image is scaled by its type's range")
    # the generated pages alone: no warning
    overrides[1] = f"dataset.normal_dir={tiny_pages_root / 'normal'}"
    clean = instantiate(compose_tiny(overrides).dataset)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*near-constant or near-black")
        clean.setup()


@pytest.mark.slow
def test_training_on_dark_16_bit_frames_warns_naming_them(tmp_path: Path) -> None:
    """The issue's report: 16-bit frames of small values trained nearly black with no data warning."""
    normal = textured_folder(tmp_path / "normal", 4)
    for index in range(2):
        frame = np.zeros((64, 64), np.uint16)  # (64,64) a dark half and a lit half, lit to 2000 of 65535: 8/255
        frame[:, 32:] = 2000 - 100 * index
        Image.fromarray(frame).save(normal / f"frame_{index}.png")
    settings = [f"dataset.normal_dir={normal}", "dataset.abnormal_dir=null", "validation_anomalies=synthetic"]
    done, _ = measured(train_command("dataset=folder", *settings, f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 of 6 images are near-constant or near-black" in done.stderr
    assert f"{normal / 'frame_0.png'}: near-black" in done.stderr
    assert f"{normal / 'frame_1.png'}: near-black" in done.stderr


@pytest.mark.slow
def test_predict_warns_of_each_blank_input(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inputs = tmp_path / "in"
    textured_folder(inputs, 1)
    Image.new("RGB", (64, 64), (0, 0, 0)).save(inputs / "black.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(inputs / "white.png")
    with caplog.at_level(logging.WARNING, logger="anomaly_lab.predict"):
        summary = predict(predict_config([f"ckpt_path={checkpoint}", f"input={inputs}", f"output={tmp_path / 'out'}"]))
    assert summary["images"] == 3  # scored all the same
    warned = sorted(record.getMessage() for record in caplog.records if "its score says little" in record.getMessage())
    assert len(warned) == 2
    assert warned[0].startswith(f"{inputs / 'black.png'}: near-constant (every pixel about 0/255) image")
    assert warned[1].startswith(f"{inputs / 'white.png'}: near-constant (every pixel about 255/255) image")


# ------------------------------------------------------------------------------------ 5. one file, two folders


@pytest.mark.slow
def test_a_hard_link_shared_by_both_folders_stops_training_naming_both(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "pages"
    shutil.copytree(tiny_pages_root, root, ignore=shutil.ignore_patterns(".complete"))
    os.link(root / "normal" / "001.png", root / "anomalous" / "also_001.png")
    folders = [f"dataset.normal_dir={root / 'normal'}", f"dataset.abnormal_dir={root / 'anomalous'}"]
    done, _ = measured(train_command("dataset=folder", *folders, f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    line = user_error_line(done)
    assert line.startswith("ConfigError: dataset.normal_dir=")
    assert f"e.g. {root / 'normal' / '001.png'} and {root / 'anomalous' / 'also_001.png'} are one file" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------- 10. messages that mislead


def test_too_few_normal_images_says_how_many_the_fractions_need() -> None:
    assert normal_images_needed(0.1, 0.2) == (3, 1, 1, 1)  # 3 in all: 1 to test, 1 to validate, 1 to train
    assert normal_images_needed(0.6) == (3, 0, 2, 1)  # ceil(0.6 x 2) = 2 leaves none of 2; ceil(0.6 x 3) = 2 of 3
    assert normal_images_needed(0.3, 0.5) == (4, 2, 1, 1)
    assert too_few_normal(2, 0.6) == (
        "dataset.val_fraction=0.6 leaves no training image of 2 normal images: it needs at least 3 (2 to validate, "
        "1 to train); give more normal images, or lower it"
    )


def test_two_normal_images_are_told_the_three_the_default_fractions_need(
    compose_tiny: ComposeFn, tiny_pages_root: Path, tmp_path: Path
) -> None:
    normal = tmp_path / "two"
    normal.mkdir()
    for name in ("000.png", "001.png"):
        shutil.copy(tiny_pages_root / "normal" / name, normal / name)
    cfg = compose_tiny(["dataset=folder", f"dataset.normal_dir={normal}", "dataset.abnormal_dir=null"])
    module = instantiate(cfg.dataset)
    with pytest.raises(BadImageError, match=r"of 2 normal images: they need at least 3 \(1 to test, 1 to validate"):
        module.setup()


def test_real_validation_anomalies_of_data_without_any_advise_synthetic_ones(
    compose_tiny: ComposeFn, tiny_pages_root: Path
) -> None:
    cfg = compose_tiny(
        [
            "dataset=folder",
            f"dataset.normal_dir={tiny_pages_root / 'normal'}",
            "dataset.abnormal_dir=null",
            "validation_anomalies=real",
            "dataset.test_fraction=0.25",
        ]
    )
    module = instantiate(cfg.dataset)
    module.setup()
    with pytest.raises(SplitError) as raised:
        check_splits(module, cfg)
    message = str(raised.value)
    assert "the data holds no anomalous image, so raising dataset.val_anomalous cannot help" in message
    assert message.endswith("use synthetic ones (validation_anomalies=synthetic), or set objective.metric=val/loss")
    assert "raise it" not in message
