"""Run logging: JSONL scalars, TensorBoard event files, and a progress bar that degrades to log lines.

Only rank 0 writes (``enabled=False`` elsewhere). The progress bar is a tqdm bar on a terminal; when
stdout is not a terminal (CI, ``nohup``, a pipe) it prints one plain line every ``log_every`` steps.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, out_dir: Path | None, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None):  # fmt: skip
        """``purge_step``: on resume, the step to continue from; readers discard older events at or after it."""
        self.enabled = enabled and out_dir is not None
        self._jsonl = None
        self._tb = None
        if self.enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(out_dir / "log.jsonl", "a", buffering=1)  # closed in close()
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge_step)

    def scalars(self, step: int, stage: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "stage": stage, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{stage}/{key}", value, step)

    def image(self, step: int, tag: str, image_chw) -> None:
        """``[3, H, W]`` in [-1, 1]."""
        if self._tb is not None:
            self._tb.add_image(tag, (image_chw.clamp(-1, 1) + 1) / 2, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """Steps ``start..total`` of one stage: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, stage: str, start: int, total: int, enabled: bool = True, log_every: int = 10,
                 interactive: bool | None = None):  # fmt: skip
        self.stage, self.total, self.enabled, self.log_every = stage, total, enabled, max(1, log_every)
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.t0, self.start = time.perf_counter(), start
        self._bar = None
        if self.enabled and self.interactive and total > start:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=stage, dynamic_ncols=True, unit="step")

    def update(self, step: int, info: dict[str, Any]) -> None:
        """Report that ``step`` (1-based count of finished steps) is done."""
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()}
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(text, refresh=False)
            return
        if step % self.log_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.t0
            done = step - self.start
            eta = elapsed / max(done, 1) * (self.total - step)
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            print(f"[{self.stage}] step {step}/{self.total} {fields} eta {eta:.0f}s", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
