"""Module names of earlier releases, before the package was split into parts (core, plugin, training, export).

``import napari_vdir.api`` and the like keep working: the old name is an alias of the module's new home, with a
``FutureWarning`` naming it. ``napari_vdir.evaluate`` left the package (it is a benchmark): importing it fails with
a message that says where it went.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "napari_vdir.api": "napari_vdir.core.api",
    "napari_vdir.backends": "napari_vdir.core.backends",
    "napari_vdir.degradations": "napari_vdir.core.degradations",
    "napari_vdir.devices": "napari_vdir.core.devices",
    "napari_vdir.inference": "napari_vdir.core.inference",
    "napari_vdir.intensity": "napari_vdir.core.intensity",
    "napari_vdir.io": "napari_vdir.core.io",
    "napari_vdir.lazy": "napari_vdir.core.lazy",
    "napari_vdir.nets": "napari_vdir.core.nets",
    "napari_vdir.tasks": "napari_vdir.core.tasks",
    "napari_vdir.user_models": "napari_vdir.core.models",
    # the weights file format stayed in core.weights; the model registry (shipped_models, resolve_model, ...)
    # is core.models: the old name finds both
    "napari_vdir.weights": ("napari_vdir.core.weights", "napari_vdir.core.models"),
    "napari_vdir.core.user_models": "napari_vdir.core.models",
    "napari_vdir.layers": "napari_vdir.plugin.layers",
    "napari_vdir._commands": "napari_vdir.plugin.commands",
    "napari_vdir._sample_data": "napari_vdir.plugin.sample_data",
    "napari_vdir._widget": "napari_vdir.plugin._qt.restore_dock",
    "napari_vdir._finetune_widget": "napari_vdir.plugin._qt.finetune_dock",
    "napari_vdir._drops": "napari_vdir.plugin._qt.drops",
}
GONE = {"napari_vdir.evaluate": "it is a benchmark now: run `python benchmarks/evaluate.py` from a source checkout"}


class _Merged(types.ModuleType):
    """An old module whose names now live in several modules: each attribute comes from the first that has it."""

    def __init__(self, name: str, homes: tuple[str, ...]):
        super().__init__(name, f"{name}: moved to {' and '.join(homes)}")
        self._homes = homes

    def __getattr__(self, attr):
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str | tuple[str, ...]):
        self.new = new

    def create_module(self, spec):
        if isinstance(self.new, tuple):
            return _Merged(spec.name, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the old module names to their new homes (or to a clear ImportError)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in GONE:
            raise ImportError(f"{fullname} was removed: {GONE[fullname]}", name=fullname)
        new = MOVED.get(fullname)
        if new is None:
            return None
        where = " and ".join(new) if isinstance(new, tuple) else new
        warnings.warn(f"{fullname} moved to {where}; import it from there", FutureWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
