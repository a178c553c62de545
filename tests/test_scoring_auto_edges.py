"""scoring=auto at its edges: a checkpoint's normal statistics that cannot normalise are refused when loaded (a zero
std or a NaN would score inf or NaN), and resume=true of a finished scoring=auto run, whose best.ckpt already holds a
choice, chooses again instead of failing to load it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from anomaly_lab.checkpoint_loading import CheckpointError, load_model
from anomaly_lab.scoring import AnomalyMap
from anomaly_lab.train import run
from tests.conftest import TINY, TINY_SYNTHETIC, compose_config

SEARCH = [
    "scoring=auto",
    "scoring.choose.maps=[l2]",
    "scoring.choose.blur_sigmas=[0]",
    "scoring.choose.score_blur_sigmas=[0]",
    "scoring.choose.reductions=[max]",
    "scoring.choose.normalise=[true]",
    "dataset.n_train=40",  # 4 normal validation images: enough for leave-one-out statistics
]


def normalising_map() -> AnomalyMap:
    return AnomalyMap(score_normalise=True, l2=1.0)


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)),  # std 0: inf scores
        (torch.full((1, 1, 8, 8), float("nan")), torch.ones(1, 1, 8, 8)),  # NaN scores
        (torch.zeros(1, 1, 8, 8), -torch.ones(1, 1, 8, 8)),  # a negative std flips the score
        (torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8)),  # one image in, three scores out
        (torch.zeros(1, 1, 8, 8, dtype=torch.long), torch.ones(1, 1, 8, 8)),
    ],
)
def test_statistics_that_cannot_normalise_are_refused_when_loaded(mean: torch.Tensor, std: torch.Tensor) -> None:
    with pytest.raises(RuntimeError, match=r"normal_mean, normal_std: normal statistics must"):
        normalising_map().load_state_dict({"normal_mean": mean, "normal_std": std})
    with pytest.raises(ValueError, match="normal statistics must"):
        normalising_map().set_normal_statistics(mean, std)


def test_a_crafted_checkpoint_with_a_zero_std_is_one_checkpoint_error(tiny_run: Path, tmp_path: Path) -> None:
    """The tiny run's checkpoint made to normalise, with a std of 0: predict and export load it through load_model."""
    checkpoint = torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["anomaly_lab"]["model"]["anomaly_map"]["score_normalise"] = True
    checkpoint["state_dict"]["model.anomaly_map.normal_mean"] = torch.zeros(1, 1, 32, 32)
    checkpoint["state_dict"]["model.anomaly_map.normal_std"] = torch.zeros(1, 1, 32, 32)
    crafted = tmp_path / "zero_std.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match=r"zero_std\.ckpt: weights do not fit .*std > 0"):
        load_model(crafted)
    checkpoint["state_dict"]["model.anomaly_map.normal_std"] = torch.ones(1, 1, 32, 32)
    torch.save(checkpoint, crafted)
    load_model(crafted)  # the same file with usable statistics loads


@pytest.mark.slow
def test_resume_of_a_finished_scoring_auto_run_chooses_again(compose_tiny, tmp_path: Path) -> None:
    """best.ckpt of the finished run holds normal statistics that the model built from the config lacks; resume=true
    (nothing left to train) loads that file to choose again."""
    out = tmp_path / "run"
    run(compose_tiny(SEARCH, output_dir=out))
    first = json.loads((out / "scoring_choice.json").read_text())["chosen"]
    assert first["score_normalise"] is True
    run(compose_tiny([*SEARCH, "resume=true"], output_dir=out))
    assert json.loads((out / "scoring_choice.json").read_text())["chosen"] == first
    load_model(out / "checkpoints" / "best.ckpt")


@pytest.mark.slow
def test_rescoring_a_scoring_auto_run_does_not_call_its_choice_a_config_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's options compose riad_wide_map's scoring, its checkpoint the one chosen: that is the choice, not
    config files that changed since."""
    from anomaly_lab.tools.rescoring import rescore

    out = tmp_path / "run"
    options = [*TINY, *TINY_SYNTHETIC, *SEARCH, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={out}"]
    run(compose_config(options))
    (out / ".hydra").mkdir()  # what a command-line run leaves: rescoring reads its options
    (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(options))
    (out / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(Path.cwd())}}}))
    with caplog.at_level("WARNING"):
        rescore(out)
    assert "compose another model" not in caplog.text


@pytest.mark.slow
def test_synthetic_validation_keeps_the_recipes_anomaly_map_and_logs_why(compose_tiny, tmp_path: Path) -> None:
    """Good images only: the synthetic anomalies choose the image score, not the map. The checkpoint predict reads
    draws riad_wide_map's map (MSGMS at its blur), scoring_choice.json says why, and metrics.json keeps both the
    chosen map's pixel AUROC and the best candidate's (which tune ranks tied trials by)."""
    out = tmp_path / "run"
    search = [*SEARCH[:4], "scoring.choose.maps=[l2,msgms]", "scoring.choose.blur_sigmas=[0,4]"]
    run(compose_tiny([*search, "validation_anomalies=synthetic"], output_dir=out))
    table = json.loads((out / "scoring_choice.json").read_text())
    decision = table["anomaly_map_against_recipe"]
    assert decision["on"] == "synthetic anomalies" and decision["kept_recipe"] is True
    assert decision["recipe"] == {"map": "msgms", "blur_sigma": 12.0, "pixel_auroc": decision["recipe"]["pixel_auroc"]}
    model = load_model(out / "checkpoints" / "best.ckpt")
    assert model.anomaly_map.weights == {"msgms": 1.0} and model.anomaly_map.blur_sigma == 12.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/chosen/pixel_auroc_model_res"] == pytest.approx(decision["recipe"]["pixel_auroc"])
    assert metrics["val/chosen/best_map_pixel_auroc_model_res"] == pytest.approx(table["anomaly_map"][0]["pixel_auroc"])
    assert "synthetic anomalies choose no map" in metrics["scoring_chosen"] or decision["difference"] <= 0
