"""The README's commands, exactly as written, on a tiny copy of the project: each prints
something; the make target CI calls turns their experiments into markdown; and the HTML of
`dvc plots diff` draws its charts offline in a real headless Chromium."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_project import ROOT, copy_baseline, project_env, run
from PIL import Image

BLOCK = re.compile(r"<!-- readme-commands:begin -->\s*```bash\n(.*?)```\s*"
                   r"<!-- readme-commands:end -->", re.S)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TERMINAL = 120   # columns the README's `dvc exp show` line must fit


def readme_commands() -> list[str]:
    """The lines of the README's marked block, without their trailing comments."""
    block = BLOCK.search((ROOT / "README.md").read_text())
    assert block, "README.md has no readme-commands block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, tiny_baseline) -> tuple[Path, dict[str, str]]:
    """The tests' tiny baseline after every README command, and what each printed on stdout
    (the `original` experiment finds every stage in the baseline's cache)."""
    project = copy_baseline(tiny_baseline, tmp_path_factory.mktemp("readme") / "project")
    # What `make setup` installs there: the vega packages the offline plots page loads.
    (project / "node_modules").symlink_to(ROOT / "node_modules")
    printed = {}
    for command in readme_commands():
        result = subprocess.run(["bash", "-c", command], cwd=project, timeout=1200,
                                env={**project_env(), "COLUMNS": str(TERMINAL)},
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        printed[command] = result.stdout
    return project, printed


def test_readme_block_has_the_comparison_commands():
    verbs = [" ".join(c.split()[:3]) for c in readme_commands()]
    assert verbs == ["dvc exp run", "dvc exp run", "dvc exp show", "dvc exp diff",
                     "dvc metrics diff", "dvc plots diff"]


@pytest.mark.timeout(1500)
def test_every_readme_command_prints_something(readme_run):
    _, printed = readme_run
    for command, out in printed.items():
        assert out.strip(), f"`{command}` printed nothing"
    show = next(out for command, out in printed.items() if command.startswith("dvc exp show"))
    assert max(len(line) for line in show.splitlines()) <= TERMINAL and "…" not in show, show
    for name in ("original", "rembg", "data.variant", "classify.arch", "test.top1"):
        assert name in show, show
    metrics = next(out for command, out in printed.items()
                   if command.startswith("dvc metrics diff"))
    assert "test.top1" in metrics and "cross.top1" in metrics, metrics


def test_metrics_report_is_markdown_of_both_diffs(readme_run):
    project, _ = readme_run
    shutil.copy2(ROOT / "Makefile", project / "Makefile")
    report = run(["make", "--no-print-directory", "metrics-report", "BASE=HEAD",
                  f"VENV={venv()}"], project)
    assert "### Headline metrics: HEAD → this change" in report
    assert "### Original → background removed (rembg)" in report
    tables = [line for line in report.splitlines() if line.startswith("| metrics/")]
    assert sum("test.top1" in line for line in tables) == 2, report


def test_panels_are_one_print_resolution_figure_per_task(readme_run):
    project, _ = readme_run
    shutil.copy2(ROOT / "Makefile", project / "Makefile")
    run(["make", "--no-print-directory", "panels", f"VENV={venv()}"], project)
    for task in ("classification", "segmentation"):
        with Image.open(project / f"reports/panels/{task}.png") as image:
            assert min(image.info["dpi"]) >= 199 and image.width > 1000


def venv() -> Path:
    """The virtual environment these tests run in, for `make VENV=...` in the copy."""
    return Path(project_env()["PATH"].split(":")[0]).parent


def browser() -> str:
    found = [shutil.which(name) for name in BROWSERS if shutil.which(name)]
    assert found, "no headless browser: run `make browser` (apt-get install chromium)"
    return found[0]


# The browser runs in a network namespace of its own (`unshare -rn`: a loopback that is down
# and no other interface), so a chart that needs the network cannot draw.
OFFLINE = ["unshare", "-rn"]


def headless(page: Path, *args: str) -> str:
    result = subprocess.run([*OFFLINE, browser(), "--headless", "--no-sandbox", "--disable-gpu",
                             "--virtual-time-budget=20000", *args, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_plots_page_draws_every_chart_offline(readme_run, tmp_path):
    if not (ROOT / "node_modules/vega-embed").is_dir():   # only this page needs Node.js
        pytest.skip("the offline charts' JavaScript is not installed: `make charts` (needs npm)")
    project, _ = readme_run
    page = project / "dvc_plots/index.html"
    source = page.read_text()
    assert "https://" not in source.split("<body>")[0], "the page loads scripts from the web"
    charts = source.count("vegaEmbed('#")
    images = source.count("<img")
    assert charts >= 5 and images >= 3, (charts, images)

    dom = headless(page, "--dump-dom")
    drawn = re.findall(r'<svg[^>]*class="marks".*?</svg>', dom, re.S)
    assert len(drawn) == charts, f"{len(drawn)} of {charts} charts drawn"
    for svg in drawn:
        marks = re.findall(r'<path[^>]* d="M[^"]+"', svg)   # lines, bars, axes with geometry
        assert len(marks) > 10, svg[:500]
    assert "tested on" in dom and "epoch" in dom

    shot = tmp_path / "page.png"
    headless(page, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 200).mean() > 0.01, "the screenshot is blank"
