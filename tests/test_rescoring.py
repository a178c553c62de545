"""Scoring a trained model again: fewer masked passes (masking.score_grid_sizes), other threshold rules, and the
two tools that measure them (passes_table, operating_point) on a real run folder."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from anomaly_lab.config_checks import check_train_config
from anomaly_lab.errors import ConfigError, UserError
from anomaly_lab.masking import GridMasking
from anomaly_lab.metrics import f1_max
from anomaly_lab.thresholds import F1Threshold, NormalSigmaThreshold, metrics_at_threshold
from anomaly_lab.train import build_module
from tests.conftest import TINY, TINY_SYNTHETIC, compose_config


def test_scoring_fewer_grid_sizes_uses_the_full_sets_own_masks() -> None:
    full = GridMasking([2, 4, 8], ratio=0.5, seed=3)
    some = GridMasking([2, 4, 8], ratio=0.5, seed=3, score_grid_sizes=[8, 4])
    full_sets, some_sets = full.coverage_masks(16, 16), some.coverage_masks(16, 16)
    assert [len(s) for s in some_sets] == [2, 2]
    assert torch.equal(some_sets[0], full_sets[2]) and torch.equal(some_sets[1], full_sets[1])
    assert (sum(map(len, full_sets)), sum(map(len, some_sets))) == (6, 4)  # masked passes per image
    # a size only scored, never trained: still a full cover, every pixel blanked exactly once
    extra = GridMasking([2], ratio=0.25, seed=3, score_grid_sizes=[8]).coverage_masks(16, 16)
    assert len(extra) == 1 and torch.equal(extra[0].sum(dim=0), torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match=r"^score_grid_sizes=\[\]: give at least one grid size"):
        GridMasking([2], ratio=0.5, score_grid_sizes=[])


def test_a_bad_score_grid_size_is_named_before_training() -> None:
    cfg = compose_config(
        [*TINY, "masking=multiscale_grid", "masking.grid_sizes=[2,4]", "masking.score_grid_sizes=[16,1000]"]
    )
    with pytest.raises(ConfigError, match=r"^masking\.score_grid_sizes=\[16, 1000\]: each must be an integer"):
        check_train_config(cfg)
        build_module(cfg)


def test_f1_midpoint_keeps_validation_f1_with_a_margin_below_the_edge() -> None:
    scores = torch.tensor([0.10, 0.20, 0.30, 0.50, 0.60, 0.05])  # (N,)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    edge, midpoint = F1Threshold()(scores, labels), F1Threshold("midpoint")(scores, labels)
    assert edge == pytest.approx(0.50)  # best F1 calls 0.5 and 0.6 anomalous (0.8) ...
    assert midpoint == pytest.approx(0.40)  # ... as does anything down to the normal 0.3 below it
    assert metrics_at_threshold(scores, labels, midpoint)["f1"] == pytest.approx(f1_max(scores, labels)[0])
    with pytest.raises(ValueError, match="position"):
        F1Threshold("middle")


def test_f1_capped_stays_just_above_the_normal_tail_when_validation_defects_score_far_above_it() -> None:
    normal = torch.linspace(0.10, 0.20, 21)  # (21,)
    scores = torch.cat([normal, torch.tensor([0.50, 0.55, 0.60])])  # three validation defects, far above
    labels = torch.tensor([0] * 21 + [1] * 3)
    assert F1Threshold()(scores, labels) == pytest.approx(0.50)  # best F1 at the lowest defect
    capped = F1Threshold(cap_percentile=99.0)(scores, labels)
    assert capped == pytest.approx(float(torch.quantile(normal.double(), 0.99)))  # the cap: below 0.5
    # where the classes overlap, best F1 lies below the normal tail, and the cap changes nothing
    overlapping = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.4, 0.95])
    overlap_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    rule, capped_rule = F1Threshold(), F1Threshold(cap_percentile=99.0)
    assert capped_rule(overlapping, overlap_labels) == rule(overlapping, overlap_labels) == pytest.approx(0.3)


def test_normal_sigma_is_mean_plus_k_std_of_the_normal_scores() -> None:
    scores, labels = torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([0, 0, 0, 1])
    assert NormalSigmaThreshold(2.0)(scores, labels) == pytest.approx(2.0 + 2.0 * 1.0)
    with pytest.raises(ValueError, match="at least 2 normal"):
        NormalSigmaThreshold()(torch.tensor([1.0, 5.0]), torch.tensor([0, 1]))


def train_run_folder(out: Path, cache: Path, extra: tuple[str, ...] | list[str] = ()) -> Path:
    """Train a tiny run (two grid sizes, F1 threshold) into `out` and write the .hydra/ files a command-line run
    leaves (overrides.yaml, hydra.yaml's working directory)."""
    from anomaly_lab.train import run

    options = [
        *TINY,
        *TINY_SYNTHETIC,
        *extra,
        f"paths.cache_dir={cache}",
        "scoring=riad",
        "masking=multiscale_grid",
        "masking.grid_sizes=[2,4]",
        "masking.ratio=0.5",
        "threshold=f1",
    ]
    run(compose_config([*options, f"paths.output_dir={out}"]))
    (out / ".hydra").mkdir()
    (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*options, f"paths.output_dir={out}"]))
    (out / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(Path.cwd())}}}))
    return out


@pytest.fixture(scope="module")
def run_with_options(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of two epochs and the .hydra/overrides.yaml the command line would leave."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    return train_run_folder(tmp_path_factory.mktemp("rescored_run"), cache, ["trainer.max_epochs=2"])


@pytest.mark.slow
def test_operating_point_reproduces_the_runs_own_threshold_and_test(run_with_options: Path) -> None:
    from scripts.operating_point import main

    recorded = json.loads((run_with_options / "metrics.json").read_text())
    rows = {row["rule"]: row for row in main([str(run_with_options), "--rules", "f1", "f1_midpoint"])}
    assert rows["f1"]["threshold"] == pytest.approx(recorded["test/threshold"], rel=1e-6)  # best.ckpt's own
    assert rows["f1"]["test F1"] == pytest.approx(recorded["test/f1"], abs=1e-6)
    assert rows["f1"]["test F1-max"] == pytest.approx(recorded["test/f1_max"], abs=1e-6)
    assert rows["f1_midpoint"]["threshold"] <= rows["f1"]["threshold"]


@pytest.mark.slow
def test_passes_table_rescores_with_fewer_passes_and_saves_each_model(run_with_options: Path, tmp_path: Path) -> None:
    from anomaly_lab.checkpoint_loading import load_model
    from scripts.passes_table import main

    recorded = json.loads((run_with_options / "metrics.json").read_text())
    images = sorted((run_with_options.parent / "cache").glob("**/*.png"))[:4]  # the generated bottles
    assert images, "the tiny run's generated test images"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index, image in enumerate(images):
        shutil.copy(image, inputs / f"{index}.png")
    saved = tmp_path / "models"
    rows = main([str(run_with_options), "--grids", "2,4", "4", "--input", str(inputs), "--save", str(saved)])
    assert [row["passes"] for row in rows] == [4, 2]
    assert rows[0]["image AUROC"] == pytest.approx(recorded["test/image_auroc"], abs=1e-6)  # the run's own scoring
    assert all(math.isfinite(row["img/s"]) and row["img/s"] > 0 for row in rows)
    fast = load_model(saved / "grids-4.ckpt")
    assert fast.masking.score_grid_sizes == [4] and sum(fast.set_sizes) == 2
    assert math.isfinite(float(fast.threshold))  # chosen again on validation with 2 passes
    with pytest.raises(Exception, match="already exists"):
        main([str(run_with_options), "--grids", "4", "--input", str(inputs), "--save", str(saved)])


@pytest.mark.slow
def test_blur_table_reproduces_the_runs_own_blur_and_chooses_on_validation(
    run_with_options: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.blur_table import chosen, main

    recorded = json.loads((run_with_options / "metrics.json").read_text())
    rows = main([str(run_with_options), "--sigmas", "4", "0", "1.5"])  # scoring=riad blurs with sigma 4
    assert [row["sigma"] for row in rows] == [4.0, 0.0, 1.5]
    assert rows[0]["test image AUROC"] == pytest.approx(recorded["test/image_auroc"], abs=1e-6)
    assert rows[0]["test pixel AUROC"] == pytest.approx(recorded["test/pixel_auroc"], abs=1e-6)
    assert all(math.isfinite(row["val pixel AUROC, model res."]) for row in rows)
    assert len({round(row["test pixel AUROC"], 9) for row in rows}) > 1  # the blur changes the map
    map_sigma, score_sigma = chosen(rows)
    best_val_pixel = round(max(row["val pixel AUROC, model res."] for row in rows), 3)
    assert round(next(r for r in rows if r["sigma"] == map_sigma)["val pixel AUROC, model res."], 3) == best_val_pixel
    assert score_sigma in (4.0, 0.0, 1.5)
    assert f"scoring.anomaly_map.blur_sigma={map_sigma:g} " in capsys.readouterr().out
    for bad in (["-1"], ["x"], ["2", "2"]):
        with pytest.raises(UserError, match="--sigmas"):
            main([str(run_with_options), "--sigmas", *bad])
    # --options: the same table for another pixel map (L2 instead of the run's MSGMS)
    l2 = main(
        [str(run_with_options), "--sigmas", "4", "--options", "scoring.anomaly_map.msgms=0", "scoring.anomaly_map.l2=1"]
    )
    assert "with scoring.anomaly_map.msgms=0 scoring.anomaly_map.l2=1" in capsys.readouterr().out
    assert l2[0]["val pixel AUROC, model res."] != rows[0]["val pixel AUROC, model res."]
    with pytest.raises(
        UserError, match=r"^--options scoring\.anomaly_map\.blur_sigma=2: the blurs are the table's rows"
    ):
        main([str(run_with_options), "--sigmas", "4", "--options", "scoring.anomaly_map.blur_sigma=2"])


@pytest.mark.slow
def test_rescoring_scores_the_checkpoints_model_with_what_its_options_change(
    run_with_options: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The model rescored is the checkpoint's spec (weights-only, the loader's classes), not what the config files
    compose now; a rescoring's options change it, and config files that changed since are named in a warning."""
    from anomaly_lab.checkpoint_loading import SPEC_KEY
    from anomaly_lab.tools.rescoring import compose_run, model_differences, plain_model, rescore

    folder = tmp_path / "run"
    shutil.copytree(run_with_options, folder)
    path = folder / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert model_differences(checkpoint[SPEC_KEY]["model"], plain_model(compose_run(folder, []))) == []
    checkpoint[SPEC_KEY]["model"]["anomaly_map"]["blur_sigma"] = 99.0  # trained with another blur than riad's 4
    torch.save(checkpoint, path)
    with caplog.at_level(logging.WARNING, logger="anomaly_lab.tools.rescoring"):
        trained = rescore(folder)
    assert "compose another model than it trained (model.anomaly_map.blur_sigma)" in caplog.text
    assert trained.module.model.anomaly_map.blur_sigma == 99.0  # the checkpoint's, not the config files'
    assert trained.module.spec is not None and trained.module.spec["model"] == checkpoint[SPEC_KEY]["model"]
    blurred = rescore(folder, ["scoring.anomaly_map.blur_sigma=2"])
    assert blurred.module.model.anomaly_map.blur_sigma == 2.0
    assert blurred.module.spec is not None
    assert blurred.module.spec["model"] == {
        **checkpoint[SPEC_KEY]["model"],
        "anomaly_map": {**checkpoint[SPEC_KEY]["model"]["anomaly_map"], "blur_sigma": 2.0},
    }
    with pytest.raises(RuntimeError, match="scored, not trained"):
        blurred.module.configure_optimizers()


@pytest.mark.slow
def test_operating_point_checks_rules_first_and_reports_a_rule_validation_cannot_serve(run_with_options: Path) -> None:
    from anomaly_lab.errors import ConfigError as RuleError
    from scripts.operating_point import main

    for bad in ("../masking/grid", "nonsense", "percentile:nokey=1", "normal_sigma:sigmas=-1"):
        with pytest.raises(RuleError, match=r"^--rules "):
            main([str(run_with_options), "--rules", bad])
    # the tiny run validates on one normal image: mean + k std needs two; its row says so, the others stand
    rows = {row["rule"]: row for row in main([str(run_with_options), "--rules", "f1", "normal_sigma:sigmas=2"])}
    assert str(rows["normal_sigma:sigmas=2"]["threshold"]).startswith("n/a: threshold=normal_sigma needs at least 2")
    assert math.isfinite(rows["f1"]["test F1"])


@pytest.mark.slow
def test_rescoring_a_model_the_options_no_longer_build_is_one_line(run_with_options: Path) -> None:
    from anomaly_lab.errors import UserError
    from scripts.operating_point import main

    with pytest.raises(UserError, match=r"best\.ckpt: its weights do not fit the model the run's options compose now"):
        main([str(run_with_options), "--rules", "f1", "--options", "model.net.base_channels=4"])


@pytest.mark.slow
def test_passes_table_refuses_a_grid_size_training_would_refuse(run_with_options: Path, tmp_path: Path) -> None:
    from scripts.passes_table import main

    with pytest.raises(ConfigError, match=r"^masking\.score_grid_sizes=\[64\]: each must be an integer from 1 to"):
        images = str(run_with_options.parent / "cache")  # the generated bottles
        main([str(run_with_options), "--grids", "64", "--input", images, "--save", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()  # nothing made for a refused command


@pytest.mark.slow
def test_relative_data_paths_resolve_where_the_run_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started in one folder with a relative cache (its generated data) is rescored from another folder:
    the tools read the run's data, and write nothing where they are started."""
    from anomaly_lab.train import run
    from scripts.operating_point import main

    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    started.mkdir(), elsewhere.mkdir()
    options = [*TINY, *TINY_SYNTHETIC, "paths.cache_dir=relative_cache", "threshold=f1"]
    monkeypatch.chdir(started)
    out = tmp_path / "run"
    run(compose_config([*options, f"paths.output_dir={out}"]))
    (out / ".hydra").mkdir()
    (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(options))
    (out / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(started)}}}))
    monkeypatch.chdir(elsewhere)
    (row,) = main([str(out), "--rules", "f1"])
    recorded = json.loads((out / "metrics.json").read_text())
    assert row["test F1"] == pytest.approx(recorded["test/f1"], abs=1e-6)
    assert list(elsewhere.iterdir()) == []  # no data generated or cached here


def test_normal_sigma_without_two_normal_validation_images_is_refused_before_training(tmp_path: Path) -> None:
    from anomaly_lab.errors import SplitError
    from anomaly_lab.train import run

    cfg = compose_config([*TINY, *TINY_SYNTHETIC, f"paths.output_dir={tmp_path / 'r'}", "threshold=normal_sigma"])
    with pytest.raises(SplitError, match=r"^threshold=normal_sigma needs at least 2 normal validation images"):
        run(cfg)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_threshold_rule_the_validation_split_cannot_serve_is_refused_before_training(tmp_path: Path) -> None:
    from anomaly_lab.errors import SplitError
    from anomaly_lab.train import run

    # the objective needs no anomalous validation image, but threshold=f1 does
    options = ["dataset.val_anomalous=0", "validation_anomalies=real", "objective.metric=val/loss", "threshold=f1"]
    cfg = compose_config([*TINY, *TINY_SYNTHETIC, f"paths.output_dir={tmp_path / 'r'}", *options])
    refusal = r"^threshold=f1 needs normal and anomalous .* leaves \d+ normal and 0 anomalous"
    with pytest.raises(SplitError, match=refusal):
        run(cfg)
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.slow
def test_speed_frontier_scores_a_run_with_fewer_passes_and_saves_each_model(
    run_with_options: Path, tmp_path: Path
) -> None:
    from anomaly_lab.checkpoint_loading import load_model
    from scripts.speed_frontier import COLUMNS, main

    rows = [
        dict(zip(COLUMNS, row, strict=True))
        for row in main([str(run_with_options), "--variants", "2,4@0.5", "4@0.75", "--save", str(tmp_path / "models")])
    ]
    assert [row["passes"] for row in rows] == ["4", "2"]  # grid sizes 2 and 4 at 0.5: 2 masks each; 4 at 0.75: 2
    assert all(0 <= float(row["val image AUROC"]) <= 1 and 0 <= float(row["test image AUROC"]) <= 1 for row in rows)
    fast = load_model(rows[1]["checkpoint"])
    assert fast.masking.score_grid_sizes == [4] and fast.masking.score_ratio == 0.75 and sum(fast.set_sizes) == 2
    assert fast.masking.ratio == 0.5  # the training ratio is the run's
    assert math.isfinite(float(fast.threshold)) and math.isfinite(float(fast.pixel_threshold))  # chosen on val
    with pytest.raises(FileExistsError):
        main([str(run_with_options), "--variants", "4@0.75", "--save", str(tmp_path / "models")])
