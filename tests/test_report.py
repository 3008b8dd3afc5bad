"""The HTML report (`snakemake --report`) of the smoke run, rendered in a real headless Chromium
(Debian's package, installed by the test when missing and running as root; when it cannot be, the
test skips with apt's reason, or fails with it under CI=true): it must load, list every
section in its menu, and display the figures of each section; screenshots land in test-output/."""

from __future__ import annotations

import os

import pytest

import browser
from browser import Browser, ChromiumUnavailable, install_chromium
from conftest import REPO, unavailable
from workflow import snakemake

pytestmark = pytest.mark.workflow

SHOTS = REPO / "test-output"
"""Where the screenshots are kept after the test (git-ignored)."""
SECTIONS = {  # menu entry → labels of its results (figures and tables)
    "1 LDS": ["LDS per method and set", "LDS table"],
    "2 λ selection": ["LDS vs λ"],
    "3 Counterfactual": ["per-sample changes", "summary table"],
    "4 Attributions": ["gen #0", "gen #1", "gen #2"],
    "5 Journey-TRAK": ["journey_trak"],
    "6 Runtime and memory": ["per rule", "table"],
}

CLICK = "Array.from(document.querySelectorAll('a')).find(a => a.textContent.trim() === {text!r}).click()"
VIEW = ("Array.from(document.querySelectorAll('tr')).find(r => r.innerText.includes({label!r}))"
        ".querySelector('a').click()")
SHOWN_PNG = ("Array.from(document.images).filter(i => i.src.startsWith('data:image/png') && i.naturalWidth > 0 "
             "&& i.getBoundingClientRect().width > 0).length")


def test_a_component_that_cannot_start_skips_with_the_reason_or_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="the mirror is down"):
        unavailable("the mirror is down")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and the test cannot run: the mirror is down"):
        unavailable("the mirror is down")


def test_a_failed_chromium_install_reports_apts_own_error(monkeypatch, tmp_path):
    """An apt-get that cannot reach its mirror (a stand-in script first on PATH, no Chromium there): the
    reason carries apt's exit status and its "E:" line, not a bare "no Chromium"."""
    fake = tmp_path / "apt-get"
    fake.write_text('#!/bin/sh\n[ "$1" = update ] && exit 0\necho "Reading package lists..."\n'
                    'echo "E: Unable to locate package chromium" >&2\nexit 100\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert browser.find_chromium() is None
    with pytest.raises(ChromiumUnavailable) as why:
        install_chromium()
    assert str(why.value) == ("`apt-get install -y -qq --no-install-recommends chromium` exited 100: "
                              "Reading package lists... | E: Unable to locate package chromium")


@pytest.fixture(scope="session")  # session, like smoke: so it is set up first and fails in seconds
def chromium() -> str:
    try:
        return install_chromium()
    except ChromiumUnavailable as why:
        unavailable(f"no Chromium for the report test: {why}")


def test_report_renders_every_section_in_chromium(chromium, smoke, tmp_path):
    report = tmp_path / "report.html"
    result = snakemake("--report", str(report), *smoke.args(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    size = report.stat().st_size
    assert 1e6 < size < 30e6, size  # self-contained: the app, the data and every figure in one file
    with Browser(chromium) as page:
        page.open(report.as_uri())
        page.wait_for("document.body.innerText.includes('RESULTS')")
        menu = page.evaluate("document.body.innerText")
        assert all(section in menu for section in SECTIONS), menu
        assert "diffattr" in menu  # the workflow description (report/workflow.rst) is the home page
        page.screenshot(SHOTS / "report-home.png")
        for section, labels in SECTIONS.items():
            page.open(report.as_uri())  # from the home page each time
            page.wait_for("document.body.innerText.includes('RESULTS')")
            page.evaluate(CLICK.format(text=section))
            if section == "4 Attributions":  # grouped by method: open the first method's grids
                page.wait_for("document.body.innerText.includes('das')")
                page.evaluate(CLICK.format(text="das"))
            page.wait_for("document.querySelectorAll('td a').length > 0")
            listed = page.evaluate("document.body.innerText")
            assert all(label in listed for label in labels), (section, listed)
            page.evaluate(VIEW.format(label=labels[0]))  # a figure: shown as a PNG in the page
            page.wait_for(f"{SHOWN_PNG} > 0")
            name = section.split(" ", 1)[1].replace(" ", "-").replace("λ", "lambda")
            page.screenshot(SHOTS / f"report-{name}.png")
        print(f"report {report} ({size / 1e6:.1f} MB); screenshots in {SHOTS}")
