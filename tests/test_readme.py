"""The README's Python example runs, and runs the model for inference: the same inputs give the same image.

Before, the example ran the model in training mode, where the renderer jitters its ray samples and every call
moves the tri-plane EMA: two identical calls differed by up to 0.016. The example is executed as written (its
fenced block, seeded), then the model it built is called again on the inputs it made.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use it from Python"


def python_example(text: str) -> str:
    """The first fenced ``python`` block under the section heading ``SECTION`` of a README's ``text``."""
    start = text.find(SECTION + "\n")
    assert start >= 0, f"README.md has no section {SECTION!r}"
    following = text[start + len(SECTION):]
    section = following[: m.start()] if (m := re.search(r"^## ", following, re.M)) else following
    block = re.search(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert block, f"README.md: no ```python block in {SECTION!r}"
    return block.group(1)


def run_example(code: str) -> dict:
    """Execute the example (seeded, so the random source is the same every run) -> its variables."""
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"{README.name} ({SECTION})", "exec"), namespace)
    return namespace


def repeat_difference(ns: dict) -> float:
    """Largest difference between the example's ``out.image`` and a second call of its model on its inputs."""
    with torch.no_grad():
        again = ns["model"](ns["source"], ns["beta"], ns["camera"])
    return (again.image - ns["out"].image).abs().max().item()


def test_the_readme_example_is_repeatable_inference():
    ns = run_example(python_example(README.read_text()))
    model, out = ns["model"], ns["out"]
    assert out.image.shape == (1, 3, 64, 64) and torch.isfinite(out.image).all()
    assert not model.training, "the example must put the model in eval mode"
    assert not out.image.requires_grad, "the example must run without autograd"
    assert not model.generator.triplane_ema.any(), "inference must leave the tri-plane EMA (zero at start) alone"
    assert repeat_difference(ns) == 0.0
    torch.testing.assert_close(ns["views"].image, out.image)  # generate once + render = the full forward


def test_the_check_fails_for_the_example_in_training_mode():
    """The same checks on the example without ``.eval()`` (what the README had) must see the difference."""
    code = python_example(README.read_text())
    assert ".eval()" in code
    ns = run_example(code.replace(".eval()", ""))
    assert ns["model"].training
    assert repeat_difference(ns) > 1e-4


def test_python_example_finds_the_block_of_its_section():
    text = "# T\n\n```python\nwrong = 1\n```\n\n## Use it from Python\n\nText.\n\n```python\nx = 1\n```\n\n" \
           "## Next\n\n```python\ny = 2\n```\n"
    assert python_example(text) == "x = 1\n"
