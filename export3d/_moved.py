"""Old module paths that still import: each moved module answers to its pre-layout name too.

Until the package was grouped by layer, every module sat in ``export3d/`` (``export3d.config``,
``export3d.render``, ``export3d.checkpoint``, ...). A meta-path finder maps each old name (and its
submodules, e.g. ``export3d.render.cameras``) to the module's new home and returns *that* module object,
so ``export3d.config.preset is export3d.model.config.preset`` and there is one copy of every module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "export3d.config": "export3d.model.config",
    "export3d.layers": "export3d.model.layers",
    "export3d.attention": "export3d.model.attention",
    "export3d.blocks": "export3d.model.blocks",
    "export3d.generator": "export3d.model.generator",
    "export3d.superres": "export3d.model.superres",
    "export3d.clebs": "export3d.model.clebs",
    "export3d.discriminator": "export3d.model.discriminator",
    "export3d.render": "export3d.model.render",
    "export3d.images": "export3d.utils.images",
    "export3d.checkpoint": "export3d.utils.checkpoint",
    "export3d.distributed": "export3d.utils.distributed",
    "export3d.train_config": "export3d.training.config",
    "export3d.losses": "export3d.training.losses",
    "export3d.weight_ema": "export3d.training.weight_ema",
    "export3d.runlog": "export3d.training.runlog",
    "export3d.ablation": "export3d.training.ablation",
    "export3d.metrics": "export3d.evaluation.metrics",
    "export3d.probe": "export3d.evaluation.probe",
}


def new_name(fullname: str) -> str | None:
    """The current module path of an old one (``export3d.render.cameras`` -> ``export3d.model.render.cameras``)."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
