"""The Python API: `from anomaly_lab import load_model; model.predict(x)` gives predict's scores and masks."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_lab import load_model
from anomaly_lab.predict import run as predict
from tests.conftest import predict_config, run_test_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_rows(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """predict's scores.csv for the tiny run's test folder."""
    out = tmp_path_factory.mktemp("api") / "out"
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    predict(predict_config([f"ckpt_path={ckpt}", f"input={run_test_folder(tiny_run)}", f"output={out}"]))
    with (out / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        row["mask_pixels"] = str(int((np.asarray(Image.open(out / row["mask"])) > 0).sum()))
    return rows


def test_a_path_an_array_a_pil_image_and_a_list_score_as_the_cli(
    tiny_run: Path, cli_rows: list[dict[str, str]]
) -> None:
    model = load_model(tiny_run / "checkpoints" / "best.ckpt")
    paths = [row["path"] for row in cli_rows]
    results = model.predict(paths)
    assert len(results) == len(cli_rows)
    for result, row in zip(results, cli_rows, strict=True):
        assert result.score == pytest.approx(float(row["score"]), rel=1e-6, abs=1e-9)
        assert result.anomalous == bool(int(row["prediction"]))
        assert int(result.mask.sum()) == int(row["mask_pixels"])
        assert result.anomaly_map.shape == result.mask.shape == Image.open(row["path"]).size[::-1]
    first = cli_rows[0]
    pil = Image.open(first["path"])
    for item in (first["path"], Path(first["path"]), np.asarray(pil.convert("RGB")), pil):
        assert model.predict(item).score == pytest.approx(float(first["score"]), rel=1e-6, abs=1e-9)


def test_input_the_api_cannot_score_is_refused_in_one_line(tiny_run: Path) -> None:
    model = load_model(tiny_run / "checkpoints" / "best.ckpt")
    with pytest.raises(ValueError, match=r"\(H,W,3\) uint8"):
        model.predict(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(TypeError, match="cannot score a int"):
        model.predict(3)


def test_the_readme_example_runs(tiny_run: Path, cli_rows: list[dict[str, str]]) -> None:
    """The README's Python example, with the tiny run's checkpoint and one of its test images for the paths."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**From Python.**") :]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    code = example.group(1)
    assert "from anomaly_lab import load_model" in code and len(code.strip().splitlines()) <= 5
    code = code.replace("outputs/runs/<run>/checkpoints/best.ckpt", str(tiny_run / "checkpoints" / "best.ckpt"))
    code = code.replace("data/mvtec_bottle/test/broken_large/000.png", cli_rows[0]["path"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    assert printed.getvalue().startswith(f"score {float(cli_rows[0]['score']):.4f}, anomalous ")


def test_a_model_without_a_pixel_threshold_masks_at_the_score_threshold_and_says_so(
    tiny_run: Path, cli_rows: list[dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint from before pixel thresholds: the API falls back as predict does, with predict's warning."""
    model = load_model(tiny_run / "checkpoints" / "best.ckpt")
    model.pixel_threshold.fill_(float("nan"))
    with caplog.at_level("WARNING", logger="anomaly_lab.predict"):
        result = model.predict(cli_rows[0]["path"])
    assert "holds no pixel threshold" in caplog.text
    at_score_threshold = model.predict(cli_rows[0]["path"], pixel_threshold=float(model.threshold))
    np.testing.assert_array_equal(result.mask, at_score_threshold.mask)
