"""README and docs/: every ``python -m export3d...`` command in a fenced shell block names a real module and
real flags, every relative link resolves, and the README stays a five-minute read."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def shell_commands(text: str) -> list[str]:
    """Commands of fenced ``bash`` / ``sh`` / ``shell`` / unlabelled blocks that run an export3d module."""
    commands = []
    for lang, body in FENCE.findall(text):
        if lang not in ("bash", "sh", "shell", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if re.match(r"^(\S*python3?|torchrun)\b.*-m export3d", line):
                commands.append(line)
    return commands


def module_and_flags(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    at = words.index("-m") + 1  # flags before the module are the launcher's (python, torchrun)
    return words[at], [w.split("=", 1)[0] for w in words[at + 1:] if w.startswith("--")]


@functools.cache
def help_text(module: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, f"python -m {module} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


COMMANDS = [(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in shell_commands(page.read_text())]


def test_the_pages_have_commands():
    assert len(COMMANDS) >= 10
    assert {module_and_flags(c)[0] for _, c in COMMANDS} >= {"export3d.train", "export3d.evaluate",
                                                              "export3d.animate", "export3d.profile"}  # fmt: skip


def test_extraction_finds_commands_and_flags():
    text = "```bash\npython -m export3d.train --rec-steps 5 \\\n  --out x   # comment --nope\n```\n```python\n" \
           "python -m export3d.fake\n```\n"
    assert shell_commands(text) == ["python -m export3d.train --rec-steps 5    --out x"]
    assert module_and_flags(shell_commands(text)[0]) == ("export3d.train", ["--rec-steps", "--out"])
    assert module_and_flags("torchrun --nproc_per_node=8 -m export3d.train --out=r") == ("export3d.train", ["--out"])


@pytest.mark.parametrize(("page", "command"), COMMANDS)
def test_command_module_and_flags_exist(page, command):
    module, flags = module_and_flags(command)
    text = help_text(module)
    missing = [f for f in flags if not re.search(re.escape(f) + r"\b", text)]
    assert not missing, f"{page}: `{command}` uses flags that `python -m {module} --help` does not list: {missing}"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    text = page.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif frag and dest.suffix == ".md":
            headings = {anchor(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            if frag not in headings:
                broken.append(target)
    assert not broken, f"{page.name}: links that do not resolve: {broken}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text()) <= 12_000
