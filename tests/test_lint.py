"""`snakemake --lint` and `snakefmt --check` are clean (enforced here, so CI runs them)."""

import subprocess
import sys

import pytest

from conftest import REPO
from workflow import snakemake


@pytest.mark.parametrize("config", ["config/smoke.yaml", "config/text_to_image.yaml"])  # + pretrain_base, customize
def test_snakemake_lint_is_clean(config, tmp_path):
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    extra = tmp_path / "paths.yaml"
    extra.write_text(f"data: {{path: {cifar}}}\n" if "cifar" in config else "{}\n")
    result = snakemake("--lint", "--configfile", config, str(extra), timeout=120)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, result.stdout


def test_snakefmt_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
