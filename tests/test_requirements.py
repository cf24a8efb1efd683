"""The seed's first step, `pip install -r gym/requirements_qwen.txt` from the repository root,
installs the top-level list: one list, read through `-r` relative to the including file."""

import re
import subprocess
import sys

from cli import ROOT


def requirement_names(path):
    lines = [x.split("#")[0].strip() for x in path.read_text().splitlines()]
    return [x for x in lines if x and not x.startswith("-")]


def test_gym_requirements_install_the_top_level_list():
    top = requirement_names(ROOT / "requirements_qwen.txt")
    assert top and not requirement_names(ROOT / "gym" / "requirements_qwen.txt")  # no copy
    # --no-index --no-deps: pip parses the files and checks what is installed, no network.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps"]
        + ["-r", "gym/requirements_qwen.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    satisfied = re.findall(r"^Requirement already satisfied: ([A-Za-z0-9_.-]+)", proc.stdout, re.M)
    assert sorted(satisfied) == sorted(re.split(r"[\[<>=!~ ]", req)[0] for req in top)


def test_the_lock_pins_every_requirement_within_its_range():
    """constraints.txt (applied by requirements_qwen.txt's -c line) pins each requirement, and
    each pin lies inside the range the code is written for: a range raised without the lock, or
    a lock refreshed past a range, fails here instead of at install time."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    assert "-c constraints.txt" in (ROOT / "requirements_qwen.txt").read_text().splitlines()
    pins = {}
    for line in requirement_names(ROOT / "constraints.txt"):
        name, version = line.split("==")
        pins[canonicalize_name(name)] = Version(version)
    for line in requirement_names(ROOT / "requirements_qwen.txt"):
        req = Requirement(line)
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pin, prereleases=True), f"{req.name}=={pin} vs {req}"
        assert not pin.local, f"{req.name}: no +build tag, so a CUDA wheel of it satisfies the pin"
