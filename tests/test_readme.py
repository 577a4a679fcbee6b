"""The README's quick start and .ci/run stay in sync."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = ROOT / "README.md"
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(test_cmd) == 1
    assert test_cmd[0].strip() in readme.read_text()
