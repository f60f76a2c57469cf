"""The layout preview image and `omost-bot preview`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from omost_engine.canvas import process
from omost_engine.canvas_code import parse
from omost_engine.preview import render_layout_preview
from tests.seed import seed_answers


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_preview_keeps_the_aspect_ratio_and_paints_far_to_near() -> None:
    layout = process(parse(seed_answers()[0]))
    image = render_layout_preview(layout, 896, 1152, long_side=512)
    assert image.size == (398, 512)
    w, h = image.size
    # bottom-right corner: only the global colour
    assert _close(image.getpixel((w - 3, h - 3)), (47, 79, 79))
    # a pixel in the centre box (near) over the triceratops box (far): 0.7 centre + 0.3 (0.7 tri + 0.3 global)
    x, y = round(60 / 90 * w), round(70 / 90 * h)
    expected = tuple(
        round(0.7 * c + 0.3 * (0.7 * t + 0.3 * g))
        for c, t, g in zip((85, 107, 47), (0, 100, 0), (47, 79, 79), strict=True)
    )
    assert _close(image.getpixel((x, y)), expected)


def test_preview_labels_are_drawn(tmp_path: Path) -> None:
    layout = process(parse(seed_answers()[0]))
    with_labels = render_layout_preview(layout, 512, 512, long_side=512)
    # the top-left label plate of the global region holds light text on the dark global colour
    crop = with_labels.crop((0, 0, 200, 40)).convert("L")
    assert crop.getextrema()[1] > 200


def test_cli_preview_writes_png_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "answer.md"
    src.write_text(seed_answers()[1], encoding="utf-8")
    out = tmp_path / "out.png"
    assert main(["preview", str(src), "-o", str(out), "--width", "1024", "--height", "768"]) == 0
    table = capsys.readouterr().out
    assert "Meteorites crashing into the ground." in table
    assert "0,50,40,90" in table and "firebrick" in table
    with Image.open(out) as image:
        assert image.size == (768, 576)


def test_cli_preview_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "answer.md"
    src.write_text(seed_answers()[1].replace("'on the left'", "'on the lefft'"), encoding="utf-8")
    assert main(["preview", str(src), "-o", str(tmp_path / "p.png"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["width"], data["height"]) == (896, 1152)
    kinds = [r["kind"] for r in data["regions"]]
    assert kinds == ["global"] + ["local"] * 6
    assert [r["distance_to_viewer"] for r in data["regions"]] == [None, 9.0, 8.0, 7.0, 6.5, 5.0, 4.5]
    meteor = data["regions"][1]
    assert meteor["box"] == [0, 50, 40, 90] and meteor["color"] == [178, 34, 34]
    assert meteor["location"] == "on the top-right" and meteor["area"] == "a small square area"
    assert meteor["prefixes"][1] == "Meteorites crashing into the ground."
    assert set(meteor) == {
        "kind",
        "location",
        "offset",
        "area",
        "distance_to_viewer",
        "box",
        "color",
        "description",
        "prefixes",
        "suffixes",
    }
    assert data["corrections"] == [
        {
            "where": "region 2",
            "field": "location",
            "given": "on the lefft",
            "corrected": "on the left",
            "line": 44,
        }
    ]


def test_cli_preview_reads_stdin_and_rejects_bad_input(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "bot.cli", "preview", "-", "-o", str(tmp_path / "s.png"), "--json"],
        input=seed_answers()[0],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["regions"]) == 6
    bad = subprocess.run(
        [sys.executable, "-m", "bot.cli", "preview", "-", "-o", str(tmp_path / "bad.png")],
        input="canvas = Canvas()\nimport os\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert "line 2:" in bad.stderr and "an import" in bad.stderr
    assert not (tmp_path / "bad.png").exists()
