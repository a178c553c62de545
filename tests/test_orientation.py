"""orient=principal_axis: every image of a part turned to one pose, its mask alike, in training, testing and predict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_lab.data.folders import FolderDataModule
from anomaly_lab.data.images import NATIVE_MASK_KEY
from anomaly_lab.orientation import apply_pose, find_pose
from anomaly_lab.predict import prepare_file, score_stream
from anomaly_lab.preprocessing import Preprocessing

SIZE = 96


def nail(dark: bool = True) -> np.ndarray:
    """A nail lying along x: a wide head on the left, a shaft, and a barb on the shaft's upper edge, which a
    mirror would move to the lower edge.  # (H,W,3) uint8"""
    ground, part = (200, 50) if dark else (40, 220)
    image = np.full((SIZE, SIZE), ground, np.uint8)
    image[34:62, 14:22] = part  # head
    image[44:52, 22:80] = part  # shaft
    image[38:44, 58:74] = part  # barb on the upper edge
    return np.repeat(image[..., None], 3, axis=-1)


def moved(image: np.ndarray, degrees: float, shift: tuple[float, float], mirror: bool = False) -> np.ndarray:
    """image turned about its centre and shifted, as a part photographed elsewhere at another angle."""
    pose = cv2.getRotationMatrix2D(((SIZE - 1) / 2, (SIZE - 1) / 2), degrees, 1.0)
    pose[:, 2] += shift
    source = image[::-1] if mirror else image
    return cv2.warpAffine(np.ascontiguousarray(source), pose, (SIZE, SIZE), borderMode=cv2.BORDER_REPLICATE)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose grey levels differ by more than a third of the part's contrast."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 50).mean())


def orient(
    image: np.ndarray, mask: np.ndarray | None, how: str, source: str = "an image"
) -> tuple[np.ndarray, np.ndarray | None]:
    """image (H,W,3) and mask (H,W) or None turned as Preprocessing.prepare turns them; sizes kept."""
    return apply_pose(image, mask, find_pose(image, how, source))


ANGLES_AND_SHIFTS = [(0, (0, 0)), (37, (5, -8)), (90, (-6, 3)), (180, (0, 0)), (-131, (7, 7))]


@pytest.mark.parametrize("dark", [True, False])
@pytest.mark.parametrize(("degrees", "shift"), ANGLES_AND_SHIFTS)
def test_a_part_at_any_angle_and_place_is_turned_to_one_pose(dark: bool, degrees: float, shift: tuple) -> None:
    reference, _ = orient(nail(dark), None, "principal_axis")
    turned, _ = orient(moved(nail(dark), degrees, shift), None, "principal_axis")
    assert differs(turned, reference) < 0.01  # a mirror or a missing half turn differs on 3-6 %
    part = np.abs(turned[..., 0].astype(int) - int(turned[0, 0, 0])) > 80
    columns = part.sum(axis=0)
    assert columns.argmax() < SIZE / 2  # the wide end (head) on the left
    rows = np.nonzero(part.any(axis=1))[0]
    assert abs((rows.min() + rows.max()) / 2 - (SIZE - 1) / 2) < 6  # centred, axis horizontal


def test_a_mirrored_part_stays_mirrored() -> None:
    """A half turn, never a flip: a mirror image (a thread of the other hand) must not look like the original."""
    reference, _ = orient(nail(), None, "principal_axis")
    mirrored, _ = orient(moved(nail(), 23, (0, 0), mirror=True), None, "principal_axis")
    assert differs(mirrored, reference) > 0.02  # the barb is on the other edge
    assert differs(mirrored, reference[::-1]) < 0.01


def test_the_mask_is_turned_with_its_image() -> None:
    image = moved(nail(), 64, (4, -3))
    defect = np.zeros((SIZE, SIZE), bool)
    defect[40:56, 40:56] = True
    image[defect] = 255  # a bright defect where the mask says
    turned, mask = orient(image, defect, "principal_axis")
    assert mask is not None and mask.dtype == bool and mask.shape == defect.shape
    bright = turned[..., 0] > 240
    assert (bright & mask).sum() / mask.sum() > 0.9 and (bright & ~mask).sum() < 0.05 * mask.sum()


def test_an_image_without_a_part_and_orient_none_are_left_as_they_are() -> None:
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    assert orient(flat, mask, "principal_axis")[0] is flat
    image = moved(nail(), 30, (0, 0))
    assert orient(image, None, "none")[0] is image


def test_training_data_ground_truth_and_predict_share_the_pose(tmp_path: Path) -> None:
    """The folder datamodule turns images and the masks kept at the file's resolution (the pixel protocol's ground
    truth) alike, and predict prepares a file exactly as the datamodule did."""
    normal, anomalous, masks = (tmp_path / name for name in ("good", "bad", "masks"))
    for folder in (normal, anomalous, masks):
        folder.mkdir()
    for i in range(6):
        Image.fromarray(moved(nail(), 30 * i, (i, -i))).save(normal / f"{i}.png")
    image = moved(nail(), 50, (3, 2))
    defect = np.zeros((SIZE, SIZE), bool)
    defect[42:54, 42:54] = True
    image[defect] = 255
    Image.fromarray(image).save(anomalous / "0.png")
    Image.fromarray(defect.astype(np.uint8) * 255).save(masks / "0_mask.png")
    preprocessing = Preprocessing(image_size=32, orient="principal_axis")
    module = FolderDataModule(
        preprocessing=preprocessing,
        normal_dir=str(normal),
        abnormal_dir=str(anomalous),
        mask_dir=str(masks),
        val_fraction=0.2,
        val_anomalous=0.0,
        test_fraction=0.2,
        batch_size=8,
        num_workers=0,
    )
    module.setup("test")
    batch = next(iter(module.test_dataloader()))
    index = int(torch.nonzero(batch["label"])[0])
    ground_truth = batch[NATIVE_MASK_KEY][index][0].numpy()  # (96,96) bool: the file's mask, turned
    assert np.array_equal(ground_truth, orient(image, defect, "principal_axis")[1])
    assert not np.array_equal(ground_truth, defect)
    from_predict = prepare_file(anomalous / "0.png", preprocessing, None)
    assert np.array_equal(from_predict.image, image)  # outputs are drawn on the file as it is
    expected = preprocessing.to_tensor(from_predict.units)[0]
    assert torch.equal(batch["image"][index], expected)


def test_a_part_longer_than_the_image_is_wide_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Turned, a corner-to-corner part loses its ends beyond the edge: the warning names the file and the share."""
    image = np.full((SIZE, SIZE, 3), 200, np.uint8)
    for i in range(SIZE):
        image[max(0, i - 2) : i + 3, i] = 50  # a diagonal bar from corner to corner
    with caplog.at_level("WARNING", logger="anomaly_lab.orientation"):
        orient(nail(), None, "principal_axis", "nail.png")
        assert not caplog.records  # a part that fits turns silently
        orient(image, None, "principal_axis", "diagonal.png")
    (record,) = caplog.records
    assert record.getMessage().startswith("diagonal.png: ") and "beyond the image edge" in record.getMessage()


def test_the_ground_turned_in_at_the_corners_draws_no_edge() -> None:
    """Beyond the edge the ground repeats the edge's pixels: a flat fill would draw a corner edge on uneven ground,
    which the net (and the gradient-based anomaly maps) would call anomalous."""
    ramp = np.linspace(150, 230, SIZE).astype(np.uint8)  # ground lit unevenly, left to right
    image = np.repeat(np.tile(ramp, (SIZE, 1))[..., None], 3, axis=-1)
    image[44:52, 20:76] = 40  # a bar, tilted below
    turned, _ = orient(moved(image, 35, (0, 0)), None, "principal_axis")
    ground = turned[..., 0].astype(int)
    steps = np.maximum(np.abs(np.diff(ground, axis=0))[:, :-1], np.abs(np.diff(ground, axis=1))[:-1])
    away_from_part = far_from(ground < 100)
    assert steps[away_from_part[:-1, :-1]].max() <= 6  # the ramp's own step is under 1 grey level a pixel


def far_from(part: np.ndarray, distance: int = 4) -> np.ndarray:
    """Pixels (H,W) bool further than `distance` from every part pixel."""
    return cv2.dilate(part.astype(np.uint8), np.ones((2 * distance + 1, 2 * distance + 1), np.uint8)) == 0


def test_crop_height_keeps_the_centre_band_and_maps_go_back_into_it() -> None:
    rows = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None] * 2, 60, axis=1).repeat(3, axis=2)  # (100,60,3)
    whole = Preprocessing(image_size=64).prepare(rows).image  # (64,64,3)
    band = Preprocessing(image_size=64, crop_height=16)
    assert band.input_shape == (16, 64) and band.band_top == 24
    assert np.array_equal(band.prepare(rows).image, whole[24:40])  # the centre 16 rows of the resized image
    square = band.uncrop(torch.ones(2, 1, 16, 64))  # (2,1,64,64)
    assert square.shape == (2, 1, 64, 64) and square[:, :, 24:40].all() and square.sum() == 2 * 16 * 64
    on_file = band.map_on_file(np.ones((16, 64), np.float32), None, 100, 60)  # the file's rows 37.5 to 62.5
    scored_rows = np.nonzero(on_file.max(axis=1) > 0.5)[0]
    assert on_file.shape == (100, 60) and scored_rows.min() in (37, 38) and scored_rows.max() in (61, 62)


@pytest.mark.parametrize("crop_height", [None, 16])
def test_predict_puts_the_anomaly_map_back_where_the_defect_is_in_the_file(
    crop_height: int | None, tmp_path: Path
) -> None:
    """A scorer whose map marks the white defect of the turned, resized (and cropped) image it is given: the map
    predict writes marks the defect where it lies in the file, not where the turn moved it."""
    image = moved(nail(), -65, (4, -3))
    defect = np.zeros((SIZE, SIZE), bool)
    defect[40:50, 52:60] = True  # on the shaft
    image[defect] = 255
    Image.fromarray(image).save(tmp_path / "0.png")
    preprocessing = Preprocessing(image_size=48, orient="principal_axis", crop_height=crop_height)

    def marks_white(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N,H,W,3) -> (N,H,W), (N,)
        maps = (units.min(axis=-1) > 230).astype(np.float32)
        return maps, maps.reshape(len(maps), -1).max(axis=1)

    [(scored, drawn_on)] = list(score_stream([tmp_path / "0.png"], preprocessing, marks_white, 4, None))
    assert np.array_equal(drawn_on, image)
    marked = scored.anomaly_map > 0.5  # (96,96)
    assert scored.anomaly_map.shape == (SIZE, SIZE)
    assert (marked & defect).sum() / (marked | defect).sum() > 0.6  # intersection over union with the defect
    turned_defect = orient(image, defect, "principal_axis")[1]
    assert (marked & turned_defect).sum() < 0.3 * turned_defect.sum()  # not where the turn moved it


def test_a_map_peaking_in_the_ground_turned_in_from_beyond_the_file_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Image.fromarray(moved(nail(), -65, (4, -3))).save(tmp_path / "0.png")
    preprocessing = Preprocessing(image_size=48, orient="principal_axis")

    def peaks_at(row: int, col: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        def scorer(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N,S,S,3) -> (N,S,S), (N,)
            maps = np.zeros(units.shape[:3], np.float32)
            maps[:, row, col] = 1.0
            return maps, maps.reshape(len(maps), -1).max(axis=1)

        return scorer

    for row, col, named in [(24, 24, False), (0, 0, True)]:  # the centre; a corner turned in from beyond the edge
        caplog.clear()
        list(score_stream([tmp_path / "0.png"], preprocessing, peaks_at(row, col), 4, None))
        warned = [r.getMessage() for r in caplog.records if "beyond the file's edge" in r.getMessage()]
        assert bool(warned) == named, warned
        assert all(message.startswith(str(tmp_path / "0.png")) for message in warned)


def test_load_prepares_a_file_as_prepare_an_array_and_keeps_the_mask_at_the_decoded_size(tmp_path: Path) -> None:
    """The one call of the datamodules and predict: a file and the same image in memory give one model input, and
    the mask stays at the decoded size, in the pose, where the model's input has another size."""
    image = moved(nail(), 40, (4, -3))
    defect = np.zeros((SIZE, SIZE), bool)
    defect[40:50, 30:60] = True
    Image.fromarray(image).save(tmp_path / "part.png")
    Image.fromarray(defect.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    preprocessing = Preprocessing(image_size=32, orient="principal_axis")
    loaded = preprocessing.load(tmp_path / "part.png", tmp_path / "mask.png")
    in_memory = preprocessing.prepare(image, defect)
    assert loaded.image.shape == (32, 32, 3) and np.array_equal(loaded.image, in_memory.image)
    assert np.array_equal(loaded.decoded, image) and loaded.file_size == (SIZE, SIZE)
    assert np.array_equal(loaded.pose, find_pose(image, "principal_axis"))
    assert np.array_equal(loaded.native_mask, orient(image, defect, "principal_axis")[1])  # (96,96) turned
    assert loaded.mask.shape == (32, 32) and loaded.mask.any()
    # at the model's size already, and tiled pages: the mask is the native one
    assert Preprocessing(image_size=SIZE).load(tmp_path / "part.png", tmp_path / "mask.png").native_mask is None
    tiled = Preprocessing(image_size=32, tiled=True).load(tmp_path / "part.png", tmp_path / "mask.png")
    assert tiled.native_mask is None and np.array_equal(tiled.mask, defect)
