"""env.yml (conda) and pyproject.toml (pip) describe the same environment; README commands hold."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def names(requirements):
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for r in requirements}


def constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.lower().split("==") for line in lines if line and not line.startswith("#"))


def test_env_yml_lists_the_same_pins_and_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "env.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # pyproject gives ranges (users' environments); constraints.txt pins what CI tests
    assert not [r for r in project["dependencies"] if "==" in r]
    pins = {f"{name}=={version}" for name, version in constraints().items() if name in ("torch", "torchvision")}
    assert pins == {"torch==2.14.1", "torchvision==0.29.1"}
    assert pins <= set(pip) and "-e ." in pip and "-c constraints.txt" in pip
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
    wanted_pins = names(project["dependencies"]) | names(project["optional-dependencies"]["test"])
    assert wanted_pins <= set(constraints())        # every dependency CI installs has its tested version
    wanted = names(project["dependencies"]) | names(project["optional-dependencies"]["test"])
    assert wanted - {"torch", "torchvision"} <= names(conda) | names(pip)


def test_readme_opens_with_the_two_setup_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and all(c.startswith("bash scripts/setup.sh && ") for c in commands)
    assert "byol.pipeline" in commands[0]
    test_command = commands[1].split("&& ", 1)[1]
    assert "bash scripts/setup.sh" in ci and test_command in ci
