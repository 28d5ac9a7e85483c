"""The install story stays consistent: one dependency list, one install script, one test command."""
import re
import tomllib
from pathlib import Path

import yaml

from labkit import lab

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_provision_installs_every_tool_preflight_checks():
    script = (REPO / "scripts" / "provision.sh").read_text()
    lines = script.split("deb_packages=(", 1)[1].splitlines()
    code = [re.sub(r"#.*", "", line) for line in lines]
    block = " ".join(code[:next(i for i, c in enumerate(code) if ")" in c) + 1]).replace(")", " ")
    packages = set(block.split())
    for tool, (pkg, _) in lab.TOOLS.items():
        assert pkg in packages, f"preflight checks {tool} but provision.sh does not install {pkg}"


def test_ci_runs_make_test_as_the_readme_says():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme


def test_every_lesson_in_the_readme_exists():
    readme = (REPO / "README.md").read_text()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert nb.name in readme, f"README.md does not list {nb.name}"
