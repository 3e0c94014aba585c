"""`dvc plots show/diff` with the committed offline template render without network.

The template (tools/plots_template/dvc_plots_offline.html, made by build.py next
to it) inlines vega, vega-lite and vega-embed. These tests run DVC in a
throw-away git+DVC repository whose dvc.yaml has this project's `plots:`
section, then:

* check the HTML loads no script over http(s) (always);
* if Chromium is installed, screenshot the page headless with every host name
  unresolvable (so the result does not depend on the machine's network) and
  check with Pillow that curves and the confusion heatmap were drawn. The same
  check run on DVC's default (CDN) page must fail, which shows it can.

Screenshots are left in pytest's tmp directory (the path is printed; run with
`-rP` or `-s` to see it); set MNISTPIPE_SCREENSHOT_DIR to also copy them there.
Debian/Ubuntu CI: `apt-get install -y chromium`.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("dvc")
Image = pytest.importorskip("PIL.Image")

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "tools" / "plots_template" / "dvc_plots_offline.html"
PINNED = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM = _find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (Debian/Ubuntu: apt-get install -y chromium); "
    "skipping the headless screenshot checks",
)

# Any <script ... src="http(s)://..."> or protocol-relative src.
REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.IGNORECASE)


# ---------------------------------------------------------------- helpers

def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="Plots Test", GIT_AUTHOR_EMAIL="plots@example.invalid",
        GIT_COMMITTER_NAME="Plots Test", GIT_COMMITTER_EMAIL="plots@example.invalid",
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
        DVC_NO_ANALYTICS="1",
        DVC_GLOBAL_CONFIG_DIR=str(home / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(home / "dvc-system"),
        DVC_SITE_CACHE_DIR=str(home / "dvc-site-cache"),
    )
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


class PlotsRepo:
    """A throw-away git+DVC repository and the environment its commands run in."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path, self.env = path, env

    def dvc(self, *args: str) -> str:
        return _run([sys.executable, "-m", "dvc", *args], self.path, self.env)

    def git(self, *args: str) -> str:
        return _run(["git", *args], self.path, self.env)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_train(path: Path, scale: float) -> None:
    rows = []
    for epoch in range(1, 7):
        train_loss = scale * 1.2 / epoch
        val_loss = scale * 1.3 / epoch + 0.05
        rows.append([epoch, round(train_loss, 4), round(1 - train_loss / 3, 4),
                     round(val_loss, 4), round(1 - val_loss / 3, 4)])
    _write_csv(path, ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"], rows)


def _write_predictions(path: Path, n: int = 200) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        actual = i % 10
        predicted = actual if rng.random() < 0.8 else int(rng.integers(0, 10))
        rows.append([i, actual, predicted, round(float(rng.uniform(0.5, 1.0)), 3)])
    _write_csv(path, ["index", "actual", "predicted", "confidence"], rows)


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> PlotsRepo:
    """git+DVC repo with this project's `plots:` section and two commits of plots/train.csv."""
    root = tmp_path_factory.mktemp("plots_repo")
    (root / "repo").mkdir()
    repo = PlotsRepo(root / "repo", _env(root))
    repo.git("init", "-q")
    repo.dvc("init", "-q")
    repo.dvc("config", "core.analytics", "false")

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (repo.path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    _write_train(repo.path / "plots" / "train.csv", scale=1.0)
    _write_predictions(repo.path / "plots" / "predictions.csv")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "first run")

    _write_train(repo.path / "plots" / "train.csv", scale=0.6)  # a better second run
    repo.git("commit", "-q", "-am", "second run")
    return repo


def _plots(repo: PlotsRepo, out: Path, *args: str) -> str:
    """Run `dvc plots <args> -o out`; return the written index.html's text."""
    repo.dvc("plots", *args, "-o", str(out))
    return (out / "index.html").read_text(encoding="utf-8")


def _screenshot(html: Path, png: Path) -> Path:
    """Headless Chromium screenshot of `html` with no network (all host names unresolvable)."""
    profile = png.with_suffix(".profile")
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--force-device-scale-factor=1", "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1200,2400",
        f"--screenshot={png}", html.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.is_file(), f"chromium wrote no screenshot ({proc.returncode}):\n{proc.stderr[-3000:]}"
    shutil.rmtree(profile, ignore_errors=True)
    keep = os.environ.get("MNISTPIPE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, Path(keep) / png.name)
    print(f"screenshot: {png}")
    return png


def _ink(png: Path) -> dict[str, int]:
    """How much was drawn: non-white pixels, coloured (saturated) pixels, distinct colours among them."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    nonwhite = (rgb < 245).any(axis=-1)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40  # greys (text, axes) are not coloured
    colours = np.unique(rgb[coloured] // 8, axis=0)  # quantized, to ignore anti-aliasing noise
    return {"nonwhite": int(nonwhite.sum()), "coloured": int(coloured.sum()),
            "colours": int(len(colours))}


def _pixels_like(png: Path, hex_colour: str, tolerance: int = 12) -> int:
    """Pixels within `tolerance` (per channel) of `hex_colour`, e.g. a line of one revision."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    target = np.array([int(hex_colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)])
    return int((np.abs(rgb - target).max(axis=-1) <= tolerance).sum())


def _heatmap_cells(png: Path) -> int:
    """Dark-blue pixels: the confusion matrix's well-filled (diagonal) cells."""
    r, g, b = np.moveaxis(np.asarray(Image.open(png).convert("RGB")).astype(np.int16), -1, 0)
    return int(((b - r > 60) & (r < 80) & (g < 110)).sum())


def _rev_colours() -> list[str]:
    """Line colours DVC gives the 1st and 2nd revision (workspace, then HEAD~1 in a diff)."""
    from dvc_render.vega import OPTIONAL_ANCHOR_RANGES

    return list(OPTIONAL_ANCHOR_RANGES["color"][:2])


def _drawn(ink: dict[str, int]) -> bool:
    """Lines in two plots (several colours) and a confusion heatmap (many blue shades)."""
    return ink["nonwhite"] >= 20_000 and ink["coloured"] >= 10_000 and ink["colours"] >= 8


# ---------------------------------------------------------------- tests

def test_template_is_self_contained():
    text = TEMPLATE.read_text(encoding="utf-8")
    assert TEMPLATE.stat().st_size < 2_000_000
    assert text.count("{plot_divs}") == 1  # required by dvc_render
    assert "{scripts}" not in text  # DVC would insert its CDN <script src> tags there
    assert not REMOTE_SCRIPT.search(text)
    for name, version in PINNED.items():
        assert f"/*! {name} v{version} |" in text  # license banners kept
    assert text.count("Redistribution and use in source and binary forms") >= 3


def test_plots_show_html_loads_nothing_remote(plots_repo, tmp_path):
    offline = _plots(plots_repo, tmp_path / "offline", "show", "--html-template", str(TEMPLATE))
    assert not REMOTE_SCRIPT.search(offline)
    assert offline.count("vegaEmbed(") >= 3  # loss, accuracy, confusion
    default = _plots(plots_repo, tmp_path / "default", "show")
    assert REMOTE_SCRIPT.search(default), "DVC's default page no longer uses a CDN?"


def test_config_option_selects_template(plots_repo, tmp_path):
    """`plots.html_template` in .dvc/config (relative to .dvc/) makes the template the default."""
    local = plots_repo.path / "tools" / "plots_template" / TEMPLATE.name
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TEMPLATE, local)
    plots_repo.dvc("config", "--local", "plots.html_template",
                   "../tools/plots_template/dvc_plots_offline.html")
    try:
        html = _plots(plots_repo, tmp_path / "configured", "show")
    finally:
        plots_repo.dvc("config", "--local", "--unset", "plots.html_template")
    assert not REMOTE_SCRIPT.search(html)
    assert f"/*! vega v{PINNED['vega']} |" in html


@pytest.mark.slow
@needs_chromium
def test_plots_show_renders_offline(plots_repo, tmp_path):
    _plots(plots_repo, tmp_path / "offline", "show", "--html-template", str(TEMPLATE))
    png = _screenshot(tmp_path / "offline" / "index.html", tmp_path / "plots_show_offline.png")
    ink = _ink(png)
    assert _drawn(ink), f"offline page looks blank: {ink}; see {png}"
    first = _rev_colours()[0]
    assert _pixels_like(png, first) >= 500, f"no {first} loss/accuracy lines; see {png}"
    assert _heatmap_cells(png) >= 2000, f"no confusion heatmap; see {png}"


@pytest.mark.slow
@needs_chromium
def test_default_cdn_page_is_blank_offline(plots_repo, tmp_path):
    """The same check fails for DVC's default page, whose scripts come from a CDN."""
    _plots(plots_repo, tmp_path / "default", "show")
    png = _screenshot(tmp_path / "default" / "index.html", tmp_path / "plots_show_cdn.png")
    ink = _ink(png)
    assert not _drawn(ink), f"CDN page drew without network?! {ink}; see {png}"


@pytest.mark.slow
@needs_chromium
def test_plots_diff_renders_offline(plots_repo, tmp_path):
    html = _plots(plots_repo, tmp_path / "diff", "diff", "HEAD~1", "--html-template", str(TEMPLATE))
    assert not REMOTE_SCRIPT.search(html)
    assert "HEAD~1" in html and "workspace" in html  # both revisions are in the data
    png = _screenshot(tmp_path / "diff" / "index.html", tmp_path / "plots_diff_offline.png")
    ink = _ink(png)
    assert _drawn(ink), f"offline diff page looks blank: {ink}; see {png}"
    for colour in _rev_colours():  # lines of both revisions
        assert _pixels_like(png, colour) >= 500, f"no {colour} lines; see {png}"
    assert _heatmap_cells(png) >= 4000, f"expected two confusion heatmaps; see {png}"
