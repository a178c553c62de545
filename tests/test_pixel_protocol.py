"""The published pixel protocol: maps resized (bilinear) to each ground-truth mask's own resolution, streamed; masks
kept at the files' resolution for the test; the whole-test-set pass of runs that select nothing on validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from anomaly_lab.checkpoint_loading import SPEC_KEY, load_model
from anomaly_lab.data.datamodules import MVTecDataModule
from anomaly_lab.data.images import NATIVE_MASK_KEY, NativeMask
from anomaly_lab.export import export_onnx, onnx_deviation
from anomaly_lab.metrics import PixelMetrics
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.train import run
from tests.conftest import ComposeFn
from tests.test_metrics import exact_aupro, exact_auroc


def upsampled(amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The reference resize: one map (1,1,H,W) bilinear to size, as float64 (h,w)."""
    return F.interpolate(amap.float(), size=size, mode="bilinear", align_corners=False)[0, 0].double().numpy()


def thin_line_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An 8x8 map whose column 2 is high, and a 1-pixel-wide defect (column 20) in a 64x64 mask: nearest shrinking
    to 8x8 (what the model-resolution masks are) widens it to the whole of column 2, 8 mask pixels wide, which the map
    separates perfectly; at 64 px the defect's normal neighbours share its high values."""
    rng = np.random.default_rng(0)
    amap = rng.uniform(0.0, 0.4, size=(8, 8))
    amap[:, 2] = rng.uniform(0.5, 1.0, size=8)
    mask = np.zeros((64, 64), bool)
    mask[:, 20] = True
    shrunk = np.array(Image.fromarray(mask).resize((8, 8), Image.Resampling.NEAREST))  # as Preprocessing does
    assert shrunk[:, 2].all() and shrunk.sum() == 8
    return torch.from_numpy(amap).float()[None, None], torch.from_numpy(mask)[None], torch.from_numpy(shrunk)[None]


def test_mask_resolution_differs_from_model_resolution_and_equals_every_pixel_exactly() -> None:
    amap, mask, shrunk = thin_line_case()  # (1,1,8,8), (1,64,64), (1,8,8)
    at_mask, at_model = PixelMetrics(num_bins=20000, max_value=1.0), PixelMetrics(num_bins=20000, max_value=1.0)
    at_mask.update(amap, [mask])
    at_model.update(amap, shrunk[None])
    big = upsampled(amap, (64, 64))
    expected_mask = exact_auroc(big[~mask[0].numpy()], big[mask[0].numpy()])
    small, small_mask = amap[0, 0].double().numpy(), shrunk[0].numpy()
    expected_model = exact_auroc(small[~small_mask], small[small_mask])
    mask_res, model_res = at_mask.compute(), at_model.compute()
    assert float(mask_res["pixel_auroc"]) == pytest.approx(expected_mask, abs=1e-3)
    assert float(model_res["pixel_auroc"]) == pytest.approx(expected_model, abs=1e-3)
    assert expected_model == 1.0 and expected_mask < 0.98  # measurably apart (0.973)
    expected_pro = exact_aupro(big[None], mask.numpy(), 0.3)
    assert float(mask_res["aupro"]) == pytest.approx(expected_pro, abs=2e-3)
    assert exact_aupro(small[None], small_mask[None], 0.3) == 1.0 and expected_pro < 0.95  # 0.909
    assert float(model_res["aupro"]) == pytest.approx(1.0, abs=2e-3)


def test_streamed_masks_of_several_sizes_equal_one_pass_over_every_pixel() -> None:
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(rng.gamma(2.0, 0.1, size=(4, 1, 8, 8))).float()
    sizes = [(64, 64), (48, 40), (8, 8), (20, 36)]  # one batch, four resolutions (one the map's own)
    masks = []
    for i, (h, w) in enumerate(sizes):
        drawn = np.zeros((h, w), bool)
        if i != 1:  # image 1: a good one (all clear)
            drawn[h // 4 : h // 2, w // 3 : w // 3 + 1 + i] = True
            maps[i, 0, 2:4, 2:4] += 0.3
        masks.append(torch.from_numpy(drawn))
    one_pass = PixelMetrics(num_bins=5000, max_value=4.0)
    one_pass.update(maps, masks)
    streamed = PixelMetrics(num_bins=5000, max_value=4.0)
    for i in range(len(maps)):
        streamed.update(maps[i : i + 1], [masks[i][None]])  # (1,h,w) as the loaders give them
    assert torch.equal(one_pass.normal_hist, streamed.normal_hist)
    assert torch.equal(one_pass.anomalous_hist, streamed.anomalous_hist)
    normal, anomalous = [], []
    for amap, mask, size in zip(maps, masks, sizes, strict=True):
        values = upsampled(amap[None], size)
        normal.append(values[~mask.numpy()])
        anomalous.append(values[mask.numpy()])
    expected = exact_auroc(np.concatenate(normal), np.concatenate(anomalous))
    for metric in (one_pass, streamed):
        assert float(metric.compute()["pixel_auroc"]) == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="expected 4 masks"):
        one_pass.update(maps, masks[:3])


def test_native_mask_packs_bits_and_costs_nothing_when_clear() -> None:
    mask = np.random.default_rng(2).random((37, 23)) < 0.3
    packed = NativeMask.of(mask)
    assert np.array_equal(packed.array(), mask) and len(packed.bits or b"") == (37 * 23 + 7) // 8
    clear = NativeMask.of(np.zeros((512, 512), bool))
    assert clear.bits is None and clear.array().shape == (512, 512) and not clear.array().any()


@pytest.fixture(scope="module")
def bottles_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated bottles at 64 px, to be read at 32 px: the files' masks are twice the model's size."""
    from anomaly_lab.data.synthetic import write_synthetic_bottles

    root = tmp_path_factory.mktemp("data") / "bottles_64"
    return write_synthetic_bottles(root, size=64, n_train=8, n_test_good=3, n_test_per_defect=2, seed=0)


def test_test_batches_carry_the_files_masks_and_all_covers_the_test_folder(bottles_64: Path) -> None:
    module = MVTecDataModule(str(bottles_64), preprocessing=Preprocessing(image_size=32), eval_batch_size=4)
    module.setup()
    batches = list(module.test_dataloader())
    native = [mask for batch in batches for mask in batch[NATIVE_MASK_KEY]]
    paths = [path for batch in batches for path in batch["path"]]
    assert batches[0]["mask"].shape[1:] == (1, 32, 32)
    for path, mask in zip(paths, native, strict=True):
        assert mask.shape == (1, 64, 64) and mask.dtype == torch.bool
        defect, stem = Path(path).parent.name, Path(path).stem
        truth = (
            np.zeros((64, 64), bool)
            if defect == "good"
            else np.asarray(Image.open(bottles_64 / "ground_truth" / defect / f"{stem}_mask.png")) > 0
        )
        assert np.array_equal(mask[0].numpy(), truth), path
    assert "mask_native" not in next(iter(module.val_dataloader()))  # validation measures no pixel metrics
    module.test_split = "all"
    every = sorted(str(p) for p in (bottles_64 / "test").glob("*/*.png"))
    whole = [path for batch in module.test_dataloader() for path in batch["path"]]
    assert sorted(whole) == every and len(every) > len(paths)
    assert set(paths) <= set(whole)
    module.test_split = "val"
    with pytest.raises(ValueError, match="test_split"):
        module.test_dataloader()


@pytest.mark.slow
@pytest.mark.parametrize("monitor", ["null", "val/wasserstein"])
def test_a_run_logs_both_resolutions_and_a_whole_test_set_pass_when_it_selects_nothing(
    monitor: str, compose_tiny: ComposeFn, bottles_64: Path
) -> None:
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={bottles_64}", f"callbacks.model_checkpoint.monitor={monitor}"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test/pixel_auroc", "test/aupro", "test/pixel_auroc_model_res", "test/aupro_model_res"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/pixel_auroc"] != metrics["test/pixel_auroc_model_res"]  # 64 px masks against 32 px ones
    with (out / "scores.csv").open() as table:
        tested = [row["path"] for row in csv.DictReader(table)]
    every = sorted(str(p) for p in (bottles_64 / "test").glob("*/*.png"))
    assert set(tested) < set(every)  # scores.csv: the test split, without validation's anomalies
    whole = {key for key in metrics if key.startswith("test/all/")}
    if monitor != "null":  # a checkpoint chosen on validation: no whole-set figure
        assert not whole
        return
    assert {"test/all/image_auroc", "test/all/pixel_auroc", "test/all/aupro", "test/all/f1_max"} <= whole
    assert not {"test/all/threshold", "test/all/tp", "test/all/f1"} & whole  # validation chose the threshold on some
    # the test split's figures are drawn once: the whole-set pass logs only its test/all/ metrics
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    for tag in ("test/score_histogram", "test/roc", "test/precision_recall"):
        assert len(events.Images(tag)) == 1, tag
    # the whole test folder's image AUROC, from a model rebuilt from the checkpoint
    model = load_model(out / "checkpoints" / "best.ckpt")
    datamodule = instantiate(cfg.dataset, preprocessing=model.preprocessing)
    datamodule.setup("fit")
    datamodule.test_split = "all"
    scores, labels, paths = [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            scores.append(model(batch["image"])[1].double())
            labels.append(batch["label"])
            paths += batch["path"]
    assert sorted(paths) == every
    score, label = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    assert metrics["test/all/image_auroc"] == pytest.approx(exact_auroc(score[label == 0], score[label == 1]), abs=1e-6)


@pytest.mark.slow
def test_a_band_crop_is_measured_against_the_files_whole_masks_and_exports(
    compose_tiny: ComposeFn, bottles_64: Path, tmp_path: Path
) -> None:
    """dataset.preprocessing.crop_height: the model takes the centre band (16x32 here); the published pixel
    metrics still cover each file's whole mask, the rows outside the band scored 0 (nothing scored there)."""
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={bottles_64}", "dataset.preprocessing.crop_height=16"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    model = load_model(out / "checkpoints" / "best.ckpt")
    assert model.input_shape == (16, 32)
    datamodule = instantiate(cfg.dataset, preprocessing=model.preprocessing)
    datamodule.setup("fit")
    maps, masks = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            assert batch["image"].shape[-2:] == (16, 32)
            square = model.preprocessing.uncrop(model(batch["image"])[0])  # (B,1,32,32)
            maps.append(F.interpolate(square, size=(64, 64), mode="bilinear", align_corners=False))
            masks += batch[NATIVE_MASK_KEY]
    score, truth = torch.cat(maps).flatten().numpy(), torch.cat(masks).flatten().numpy()
    assert torch.cat(masks).shape[-2:] == (64, 64)  # the files' own masks, whole: not cut to the band
    assert metrics["test/pixel_auroc"] == pytest.approx(exact_auroc(score[~truth], score[truth]), abs=2e-3)
    onnx_path = tmp_path / "band.onnx"
    spec = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)[SPEC_KEY]
    export_onnx(model, onnx_path, spec)
    assert max(onnx_deviation(onnx_path, model).values()) < 1e-4
