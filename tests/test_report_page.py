"""predict's report.html: the data the page gets (truth from folder names, order, links, thumbnails, escaping)
and, in Debian's headless chromium driven by Selenium, the page itself: no console errors, thumbnails render,
the threshold slider, the folder and verdict filters and the confusion counts give the numbers scores.csv gives,
rows are added lazily, and it opens from a copy of the output folder."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.metrics import image_auroc
from anomaly_lab.report_page import (
    REPORT_NAME,
    THUMBNAIL_SIZE,
    embedded_json,
    folders_of,
    report_entries,
    truth_from_folders,
    write_report,
)


def expected_counts(scores: Sequence[float], truths: Sequence[int | None], threshold: float) -> dict[str, int]:
    """The page's counts at threshold, computed as its script does (score >= threshold is anomalous): images,
    anomalous, normal, and tp, fp, fn, tn over the images of known truth."""
    anomalous = np.asarray(scores, dtype=np.float64) >= threshold  # NaN: never
    truth = np.asarray([-1 if value is None else value for value in truths])
    return {
        "images": len(anomalous),
        "anomalous": int(anomalous.sum()),
        "normal": int((~anomalous).sum()),
        "tp": int((anomalous & (truth == 1)).sum()),
        "fp": int((anomalous & (truth == 0)).sum()),
        "fn": int((~anomalous & (truth == 1)).sum()),
        "tn": int((~anomalous & (truth == 0)).sum()),
    }


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def truth_of(path: str, root: str) -> int | None:
    return truth_from_folders(folders_of(Path(path), Path(root))[1])


@pytest.mark.parametrize(
    ("root", "relative", "truth"),
    [
        ("/data/mvtec_bottle/test", "good/000.png", 0),  # MVTec: test/good
        ("/data/mvtec_bottle/test", "broken_large/000.png", 1),  # MVTec: test/<defect>
        ("/data/mvtec_bottle", "test/contamination/001.png", 1),
        ("/data/mvtec_bottle", "train/good/001.png", 0),
        ("/data/mvtec_bottle/test/crack", "000.png", 1),  # the defect folder itself as input
        ("/data/mvtec_bottle/test/good", "000.png", 0),
        ("/data/mvtec_bottle/test", "000.png", None),  # directly in test/: no folder says
        ("/data/parts", "normal/a.png", 0),  # labelled folders
        ("/data/parts", "Anomalous/a.png", 1),  # case-insensitive
        ("/data/parts", "line2/bad/a.png", 1),
        ("/data/parts", "defect/a.png", 1),
        ("/data/parts", "anomaly/a.png", 1),
        ("/data/parts", "line2/a.png", None),
        ("/data/parts", "a.png", None),
        ("/data/parts", "defects/a.png", None),  # exact names only
        ("/data/good", "test/crack/a.png", 1),  # the nearest folder decides
        ("/data", "defect/good/a.png", 0),
        ("/data", "bad_batch/a.png", None),
    ],
)
def test_truth_from_folder_names(root: str, relative: str, truth: int | None) -> None:
    assert truth_of(f"{root}/{relative}", root) == truth


def write_png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, np.uint8)
    Image.fromarray(array).save(path)
    return path


def fake_predict_output(
    tmp_path: Path, layout: dict[str, list[float]], image_size: tuple[int, int] = (40, 30)
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """An input folder of generated images (folder -> scores) and an output folder with predict's heatmaps and
    masks for them; the rows predict would pass to write_report."""
    root, output = tmp_path / "input", tmp_path / "output"
    rows = []
    for folder, scores in layout.items():
        for index, score in enumerate(scores):
            name = PurePosixPath(folder, f"{index:03d}.png") if folder else PurePosixPath(f"{index:03d}.png")
            source = write_png(root / name, image_size, (40 + 10 * index) % 256)
            heatmap = write_png(output / "heatmaps" / name, image_size, 120)
            mask = write_png(output / "masks" / name, image_size, 255 * (index % 2), mode="L")
            rows.append(
                {
                    "path": str(source),
                    "score": score,
                    "prediction": int(score >= 0.5),
                    "heatmap": str(heatmap.relative_to(output)),
                    "mask": str(mask.relative_to(output)),
                }
            )
    return root, output, rows


def page_data_of(report: Path) -> dict[str, Any]:
    """The JSON the page's script reads."""
    text = report.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert match is not None
    return json.loads(match.group(1))


SUMMARY = {"threshold": 0.5, "threshold_from": "checkpoint", "checkpoint": "x.ckpt", "input": "in", "skipped": []}


def test_entries_are_sorted_by_score_with_folders_and_escaped_links(tmp_path: Path) -> None:
    root = tmp_path / "in"
    rows = [
        {"path": str(root / "good" / "a b#1.png"), "score": 0.2, "heatmap": "heatmaps/good/a b#1.png", "mask": "m"},
        {"path": str(root / "crack" / "x.jpg"), "score": 0.9, "heatmap": "h", "mask": "m"},
        {"path": str(root / "top.png"), "score": math.nan, "heatmap": "h", "mask": "m"},
        {"path": str(root / "good" / "b.png"), "score": 0.9, "heatmap": "h", "mask": "m"},
    ]
    entries = report_entries(rows, root)
    assert [entry["name"] for entry in entries] == ["crack/x.jpg", "good/b.png", "good/a b#1.png", "top.png"]
    assert [entry["folder"] for entry in entries] == ["crack", "good", "good", ""]
    assert [entry["truth"] for entry in entries] == [None, 0, 0, None]  # crack/ is not inside test/
    assert str(entries[0]["thumbs"]["image"]) == "thumbnails/image/crack/x.jpg.png.jpg"  # as heatmaps/ names it
    assert str(entries[2]["thumbs"]["mask"]) == "thumbnails/mask/good/a b#1.png.png"


def test_the_page_data_cannot_close_its_script_element() -> None:
    name = "</script><script>alert(1)</script>&<!--"
    text = embedded_json({"images": [{"name": name}]})
    assert "<" not in text and ">" not in text
    assert json.loads(text)["images"][0]["name"] == name


def test_write_report_makes_small_thumbnails_and_a_page_without_external_links(tmp_path: Path) -> None:
    root, output, rows = fake_predict_output(
        tmp_path, {"good": [0.1, 0.6], "bad": [0.9, math.inf], "": [math.nan]}, image_size=(400, 300)
    )
    rows[0]["path"] = str(root / "good" / "missing.png")  # gone since predict read it: no thumbnail, no error
    report = write_report(output, rows, SUMMARY, root)
    assert report == output / REPORT_NAME
    data = page_data_of(report)
    images = data["images"]
    assert [image["score"] for image in images] == ["Infinity", 0.9, 0.6, 0.1, "NaN"]
    assert [image["truth"] for image in images] == [1, 1, 0, 0, None]
    assert images[3]["thumbs"]["image"] is None and images[3]["thumbs"]["heatmap"] is not None
    for image in images:
        for kind, link in image["thumbs"].items():
            if link is None:
                continue
            with Image.open(output / link) as thumbnail:
                assert max(thumbnail.size) == THUMBNAIL_SIZE
                assert thumbnail.format == ("PNG" if kind == "mask" else "JPEG")
        assert image["links"]["heatmap"].startswith("heatmaps/")
    assert images[0]["size"] == [128, 96]
    text = report.read_text(encoding="utf-8")
    outside = set(re.findall(r"https?://[\w.-]+|=\"//", text)) - {"http://www.w3.org"}  # the SVG namespace name
    assert not outside
    assert '<link rel="stylesheet"' not in text and "<script src" not in text and "@import" not in text


@pytest.fixture(scope="module")
def predicted(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """predict's output for the tiny run's test folder (test/good, test/<defect>: the truth is known)."""
    from anomaly_lab.predict import run

    with (tiny_run / "scores.csv").open() as file:
        test_folder = Path(next(csv.DictReader(file))["path"]).parent.parent
    output = tmp_path_factory.mktemp("report") / "predict"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="predict",
            overrides=[
                "progress=false",
                f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}",
                f"input={test_folder}",
                f"output={output}",
            ],
        )
    run(cfg)
    return output


def read_scores(output: Path) -> list[dict[str, str]]:
    with (output / "scores.csv").open() as file:
        return list(csv.DictReader(file))


def test_predict_writes_the_report_beside_scores_csv(predicted: Path) -> None:
    rows = read_scores(predicted)
    assert list(rows[0])[:5] == ["path", "score", "prediction", "heatmap", "mask"]  # no column added
    data = page_data_of(predicted / REPORT_NAME)
    summary = json.loads((predicted / "summary.json").read_text())
    assert data["threshold"] == summary["threshold"]
    assert len(data["images"]) == len(rows)
    assert sorted(image["score"] for image in data["images"]) == sorted(float(row["score"]) for row in rows)
    assert {image["truth"] for image in data["images"]} == {0, 1}
    for image in data["images"]:
        assert image["truth"] == int(image["folder"] != "good")
        for link in image["thumbs"].values():
            assert (predicted / link).is_file()


# --- in a real browser ------------------------------------------------------------------------------------------


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, in one line; None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no selenium: pip install -e '.[dev]' (and apt-get install chromium chromium-driver)"
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        return f"no {' or '.join(missing)}: apt-get install chromium chromium-driver"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium under /usr/bin/chromedriver (Selenium Manager never runs: both paths are given)."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser tests: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, report: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(report.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def severe_logs(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def counts_on_page(driver: Any) -> dict[str, int]:
    ids = {"images": "count-images", "anomalous": "count-anomalous", "normal": "count-normal"}
    ids.update({key: key for key in ("tp", "fp", "fn", "tn")})
    texts = driver.execute_script(
        "var ids = arguments[0], out = {};"
        "Object.keys(ids).forEach(function (k) { out[k] = document.getElementById(ids[k]).textContent; });"
        "return out;",
        ids,
    )
    return {key: int(value) for key, value in texts.items()}


def set_threshold(driver: Any, value: float) -> float:
    """Move the slider to value as a drag would (its value set, then its input event); the value it holds (a
    range input keeps 15 significant digits)."""
    held = driver.execute_script(
        "var s = document.getElementById('threshold'); s.value = String(arguments[0]);"
        "s.dispatchEvent(new Event('input', {bubbles: true})); return s.value;",
        value,
    )
    return float(held)


def listed_names(driver: Any) -> list[str]:
    return driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#rows tr'), function (r) {"
        " return r.dataset.name; });"
    )


def wait_until(driver: Any, condition: Callable[[], bool]) -> None:
    """Wait (20 s at most: a margin for a busy machine, not a timing assertion) until condition() holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda _: condition())


def assert_visible_thumbnails_render(driver: Any, rows: int) -> None:
    """The first rows' thumbnails, each scrolled into view, load and decode (naturalWidth > 0)."""
    images = driver.find_elements("css selector", "#rows img")[: 3 * rows]
    assert images
    for image in images:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
        wait_until(driver, partial(image.get_property, "complete"))
        assert image.get_property("naturalWidth") > 0, image.get_attribute("src")


def select_option(driver: Any, element_id: str, text_start: str) -> None:
    from selenium.webdriver.support.ui import Select

    select = Select(driver.find_element("id", element_id))
    (option,) = [option for option in select.options if option.text.startswith(text_start)]
    select.select_by_visible_text(option.text)


@pytest.mark.slow
def test_the_page_in_chromium_counts_as_scores_csv_says(predicted: Path, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    copy = tmp_path / "copied to a share" / "predict"  # the page opens from a copy of the folder
    shutil.copytree(predicted, copy)
    open_page(browser, copy / REPORT_NAME)
    rows = read_scores(predicted)
    names = [str(PurePosixPath(Path(row["path"]).parent.name, Path(row["path"]).name)) for row in rows]
    scores = [float(row["score"]) for row in rows]
    truths = [int(Path(row["path"]).parent.name != "good") for row in rows]  # test/good and test/<defect>
    threshold = json.loads((predicted / "summary.json").read_text())["threshold"]

    assert_visible_thumbnails_render(browser, rows=len(rows))
    assert counts_on_page(browser) == expected_counts(scores, truths, threshold)
    order = sorted(range(len(rows)), key=lambda i: (-scores[i], names[i]))
    assert listed_names(browser) == [names[i] for i in order]
    auroc = float(browser.find_element("id", "auroc").get_attribute("data-value"))
    assert auroc == pytest.approx(image_auroc(scores, np.asarray(truths)), abs=1e-6)  # float32 there
    points = browser.find_element("css selector", "#roc polyline").get_attribute("points").split()
    assert len(points) == len(set(scores)) + 1

    distinct = sorted(set(scores))
    for value in [(distinct[1] + distinct[2]) / 2, (distinct[-3] + distinct[-2]) / 2]:  # between two scores
        held = set_threshold(browser, value)
        assert held == pytest.approx(value, rel=1e-14)
        assert counts_on_page(browser) == expected_counts(scores, truths, held), value
    slider = browser.find_element("id", "threshold")
    slider.send_keys(Keys.END)  # the highest score: only the images of that score stay anomalous
    assert counts_on_page(browser) == expected_counts(scores, truths, max(scores))
    assert float(browser.find_element("id", "threshold-value").get_attribute("value")) == max(scores)
    slider.send_keys(Keys.HOME)  # the lowest score: every image is anomalous
    assert counts_on_page(browser)["anomalous"] == len(rows)
    box = browser.find_element("id", "threshold-value")  # typed: exactly a score, which counts as anomalous
    box.clear()
    box.send_keys(repr(distinct[-2]))
    assert counts_on_page(browser) == expected_counts(scores, truths, distinct[-2])
    assert expected_counts(scores, truths, distinct[-2])["anomalous"] == scores.count(distinct[-1]) + 1

    # the value the slider holds: 15 significant digits, which may round a score's 17 up past it
    middle = set_threshold(browser, distinct[len(distinct) // 2])
    select_option(browser, "folder", "good ")
    good = [i for i in order if names[i].startswith("good/")]
    assert listed_names(browser) == [names[i] for i in good]
    at_middle = expected_counts([scores[i] for i in good], [truths[i] for i in good], middle)
    assert counts_on_page(browser) == at_middle
    select_option(browser, "verdict", "anomalous")
    assert listed_names(browser) == [names[i] for i in good if scores[i] >= middle]
    select_option(browser, "folder", "all folders")
    select_option(browser, "verdict", "false negatives")
    assert listed_names(browser) == [names[i] for i in order if truths[i] == 1 and scores[i] < middle]
    set_threshold(browser, distinct[0] - 1.0)  # the slider's low end: nothing is normal, the filtered list empties
    browser.execute_script("return new Promise(function (done) { requestAnimationFrame(done); });")
    assert listed_names(browser) == []
    assert browser.find_element("id", "empty").is_displayed()
    assert severe_logs(browser) == []


@pytest.mark.slow
def test_thousands_of_rows_are_added_as_one_scrolls(tmp_path: Path, browser: Any) -> None:
    rng = np.random.default_rng(0)
    layout = {"good": list(rng.random(700)), "defect": list(rng.random(500) + 0.3), "other": list(rng.random(300))}
    root, output, rows = fake_predict_output(tmp_path, layout, image_size=(16, 16))
    write_report(output, rows, SUMMARY, root)
    open_page(browser, output / REPORT_NAME)
    assert len(listed_names(browser)) == 100  # the first chunk only
    assert_visible_thumbnails_render(browser, rows=3)

    def rows_listed(count: int) -> bool:
        return len(listed_names(browser)) >= count

    for shown in (200, 300):  # the end of the list scrolled into view: the next chunk comes
        browser.execute_script("document.getElementById('more').scrollIntoView();")
        wait_until(browser, partial(rows_listed, shown))
    scores = [float(row["score"]) for row in rows]
    truths = [truth_of(row["path"], str(root)) for row in rows]
    set_threshold(browser, 0.75)
    assert counts_on_page(browser) == expected_counts(scores, truths, 0.75)
    assert browser.find_element("id", "count-known").text == "1200"  # other/ has no truth
    assert severe_logs(browser) == []


@pytest.mark.slow
def test_without_truth_the_page_shows_counts_only(tmp_path: Path, browser: Any) -> None:
    root, output, rows = fake_predict_output(tmp_path, {"line1": [0.2, 0.7], "": [0.4]})
    write_report(output, rows, SUMMARY, root)
    open_page(browser, output / REPORT_NAME)
    assert counts_on_page(browser)["anomalous"] == 1
    assert not browser.find_element("id", "truth-panel").is_displayed()
    assert not browser.find_element("id", "roc-panel").is_displayed()
    options = [option.get_attribute("value") for option in browser.find_elements("css selector", "#verdict option")]
    assert options == ["all", "anomalous", "normal"]
    select_option(browser, "folder", "(top level)")
    assert listed_names(browser) == ["000.png"]
    assert_visible_thumbnails_render(browser, rows=1)
    assert severe_logs(browser) == []
