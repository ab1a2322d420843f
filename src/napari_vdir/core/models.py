"""The model registry: the shipped models and the user's models, found by name.

Shipped models are the weights files in the package's ``models`` folder (or a source checkout's top-level
``models/``). User models are weights files fine-tuned by the user, in the user models folder:
``$NAPARI_VDIR_MODELS`` when set, else ``napari-vdir/models`` in the platform's user-data folder
(``~/.local/share`` or ``$XDG_DATA_HOME`` on Linux, ``~/Library/Application Support`` on macOS, ``%APPDATA%`` on
Windows). A model's name is its file stem; a shipped name wins over a user file of the same name
(:func:`resolve_model`). Every user file is validated with :func:`napari_vdir.core.weights.read_info` before
it is listed; one that fails is skipped with a warning. The file format itself is :mod:`napari_vdir.core.weights`.

No Qt here: GUI code subscribes with :func:`on_user_models_changed` and is called, with no arguments,
after each :func:`save_user_model` (or :func:`notify_user_models_changed`).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from napari_vdir.core.weights import (
    WEIGHTS_SUFFIX,
    ModelInfo,
    WeightsError,
    existing_file,
    read_info,
    save_weights,
)

# ----------------------------------------------------------------------------- shipped and user models, by name

def shipped_dirs() -> list[Path]:
    """Installed package data first, then the source checkout's top-level ``models/``."""
    dirs = [Path(str(resources.files("napari_vdir") / "models")),
            Path(__file__).resolve().parents[3] / "models"]
    return [d for d in dirs if d.is_dir()]


@lru_cache(maxsize=1)
def shipped_models() -> dict[str, Path]:
    """Name -> path of every shipped weights file (name = file stem)."""
    found: dict[str, Path] = {}
    for d in shipped_dirs():
        for p in sorted(d.glob(f"*{WEIGHTS_SUFFIX}")):
            found.setdefault(p.stem, p)
    return found


def default_model_name(task: str, channels: int, scale: int = 1) -> str:
    kind = "rgb" if channels == 3 else "gray"
    return f"sr-x{scale}-{kind}" if task == "sr" else f"{task}-{kind}"


def available_models() -> dict[str, Path]:
    """Name -> path of every model that ``model=NAME`` finds: the shipped ones, then the user models
    (:func:`list_user_models`) whose names no shipped model has."""
    found = dict(shipped_models())
    for name, path in list_user_models().items():
        found.setdefault(name, path)
    return found


def looks_like_path(model: str | os.PathLike) -> bool:
    """Whether a model argument names a file rather than a model: a ``Path``, or text with a path
    separator or the weights suffix (``./m``, ``runs/x/denoise.safetensors``, ``m.safetensors``).
    Anything else is a model name, even where a file or folder of that name exists here."""
    if isinstance(model, os.PathLike):
        return True
    text = str(model)
    separators = {"/", os.sep, os.altsep} - {None}
    return any(sep in text for sep in separators) or text.lower().endswith(WEIGHTS_SUFFIX)


def find_model(model: str | os.PathLike) -> Path:
    """A model name or a weights file -> the weights file; the one resolver of every command.

    A path (:func:`looks_like_path`) must be an existing file. A name means the shipped model of that
    name, else the user model of that name (:func:`user_models_dir`): a folder or file of the
    same name in the working directory never hides a model. Raises :class:`WeightsError` (one line).
    """
    if looks_like_path(model):
        path = Path(model)
        if not path.is_file() and path.name == str(model) and path.stem in _model_names():
            raise WeightsError(f"weights file not found: {path} (for the model {path.stem!r}, "
                               f"give its name without {WEIGHTS_SUFFIX})")
        return existing_file(path)
    name = str(model)
    if name in shipped_models():
        return shipped_models()[name]
    path, problem = user_model(name)
    if path is not None:
        return path
    user = [n for n in _model_names() if n not in shipped_models()]
    here = f"; for the file or folder {name!r} here, write ./{name}" if Path(name).exists() else ""
    bad = f"; its file is not usable: {problem}" if problem else ""
    raise WeightsError(f"no shipped model named {name!r} and no user model of that name in {user_models_dir()}"
                       f"{bad}{here}; shipped: {', '.join(shipped_models()) or 'none'}; "
                       f"user: {', '.join(user) or 'none'}")


def _model_names() -> list[str]:
    return list(available_models())


def resolve_model(model: str | Path | None, task: str, channels: int, scale: int = 1) -> Path:
    """Turn a model name, a path or None (the task's default) into a weights file path.

    ``model`` goes to :func:`find_model`: a name means the shipped model of that name, then the user
    model (:func:`user_models_dir`), so a shipped name always means the shipped
    model; text is a path only when it looks like one (:func:`looks_like_path`).
    For gray input with no gray model shipped, the colour model is used (the caller replicates the channel).
    The task's default (``model=None``) is always a shipped model.
    """
    if model is not None:
        return find_model(model)
    names = [default_model_name(task, channels, scale)]
    if channels == 1:
        names.append(default_model_name(task, 3, scale))
    for name in names:
        if name in shipped_models():
            return shipped_models()[name]
    raise WeightsError(f"no shipped model for task {task!r}" + (f" x{scale}" if task == "sr" else "")
                       + f" (looked for {', '.join(names)}); pass model=PATH to a weights file, "
                       "e.g. one made by `python -m napari_vdir.training`")


def list_models() -> list[ModelInfo]:
    """Metadata of every shipped model, then of every user model (see :func:`available_models`); each
    ``name`` is the one ``model=NAME`` takes (the file stem)."""
    infos = [replace(read_info(p), name=name) for name, p in shipped_models().items()]
    for name, path in list_user_models().items():
        info = None if name in shipped_models() else user_model_info(path)  # None: broken since it was listed
        if info is not None:
            infos.append(replace(info, name=name))
    return infos


# ----------------------------------------------------------------------------- the user models folder

ENV_VAR = "NAPARI_VDIR_MODELS"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class UserModelWarning(UserWarning):
    """A file in the user models folder is not a usable weights file (it is skipped)."""


def user_models_dir() -> Path:
    """Where fine-tuned models are kept (the folder need not exist yet)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    # roaming=True: %APPDATA% on Windows; no effect elsewhere
    return Path(platformdirs.user_data_dir("napari-vdir", appauthor=False, roaming=True)) / "models"


def check_model_name(name: str) -> str:
    """A user model's name becomes its file name: letters, digits, '.', '_', '-' (at most 64), no path."""
    name = str(name).strip()
    if name.endswith(WEIGHTS_SUFFIX):
        name = name[: -len(WEIGHTS_SUFFIX)]
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, "
                         "starting with a letter or digit)")
    return name


# (path, mtime_ns, size) -> ModelInfo, or the error text of a bad file (warned about once per version)
_checked: dict[tuple[str, int, int], object] = {}
_checked_lock = threading.Lock()


def list_user_models() -> dict[str, Path]:
    """Name -> path of every valid weights file in :func:`user_models_dir`, sorted by name.

    Files that are not valid napari-vdir weights (truncated, foreign, a checkpoint) are skipped with a
    :class:`UserModelWarning` (once per file version), never an exception.
    """
    folder = user_models_dir()
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.glob(f"*{WEIGHTS_SUFFIX}")):
        if path.name.startswith(".") or not path.is_file():  # hidden: a save in progress
            continue
        if _validated(path) is not None:
            found[path.stem] = path
    return found


def user_model(name: str) -> tuple[Path | None, str | None]:
    """(path, None) of the valid user model ``name``; (None, why) when its file is not usable;
    (None, None) when there is none. Only that one file is read (a bad neighbour does not matter)."""
    if not NAME_PATTERN.fullmatch(str(name)):
        return None, None
    path = user_models_dir() / f"{name}{WEIGHTS_SUFFIX}"
    if not path.is_file():
        return None, None
    known = _check(path)
    return (path, None) if not isinstance(known, str) else (None, known)


def user_model_info(path: Path):
    """The ModelInfo of a user model file, or None (with a warning once) when it is not usable."""
    known = _check(path)
    return None if isinstance(known, str) else known


def _validated(path: Path):
    """ModelInfo of a valid file, else None (with a warning the first time this version of it is seen)."""
    known = _check(path, stacklevel=4)
    return None if isinstance(known, str) else known


def _check(path: Path, stacklevel: int = 3):
    """ModelInfo of a valid file, else the one-line reason (warned about once per version of the file)."""
    try:
        st = path.stat()
    except OSError as err:
        return " ".join(str(err).split())
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _checked_lock:
        known = _checked.get(key)
    if known is None:
        try:
            known = read_info(path)
        except Exception as err:  # noqa: BLE001 — a file nobody vouches for: any failure just skips it
            known = " ".join(str(err).split()) or type(err).__name__
            known = known if isinstance(err, WeightsError) else f"{path}: {known}"
            warnings.warn(f"user model skipped: {known}", UserModelWarning, stacklevel=stacklevel)
        with _checked_lock:
            _checked[key] = known
    return known


def save_user_model(name: str, model, info, *, overwrite: bool = False, notify: bool = True,
                    half: bool = True) -> Path:
    """Write ``model`` as ``<user_models_dir>/<name>.safetensors`` and return its path.

    The write is atomic (:func:`napari_vdir.core.weights.save_weights` writes a temporary file beside the
    target and renames it): a crash never leaves a partial file under the model's name. ``info.name``
    is set to ``name``. A shipped model's name is refused (it would always win over this file), and an
    existing user model is only replaced with ``overwrite=True``. ``notify``: call the
    :func:`on_user_models_changed` subscribers afterwards, in this thread.
    """
    name = check_model_name(name)
    if name in shipped_models():
        raise ValueError(f"{name!r} is the name of a shipped model; choose another name")
    path = user_models_dir() / f"{name}{WEIGHTS_SUFFIX}"
    if path.exists() and not overwrite:
        raise FileExistsError(f"a user model named {name!r} exists ({path}); choose another name")
    save_weights(path, model, replace(info, name=name), half=half)
    if notify:
        notify_user_models_changed()
    return path


def unique_model_name(base: str) -> str:
    """``base`` made a valid name that no shipped or user model has yet (``base-2``, ``base-3``, ...)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(base)).strip("-._")[:56] or "model"
    taken = set(shipped_models()) | {p.stem for p in user_models_dir().glob("*.safetensors")}
    if cleaned not in taken:
        return cleaned
    k = 2
    while f"{cleaned}-{k}" in taken:
        k += 1
    return f"{cleaned}-{k}"


# ----------------------------------------------------------------------------- change notifications

_subscribers: list = []  # weakref.WeakMethod for bound methods (a closed widget drops out), else the callable
_subscribers_lock = threading.Lock()


def on_user_models_changed(callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback()`` after every change of the user models folder made through this module.

    Bound methods are held weakly (an object that is gone is dropped), other callables strongly.
    Callbacks run in the thread that saved the model; Qt code should wrap its callback in
    ``superqt.utils.ensure_main_thread``. Returns a function that unsubscribes.
    """
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") and hasattr(callback, "__func__") \
        else callback
    with _subscribers_lock:
        _subscribers.append(ref)

    def unsubscribe() -> None:
        with _subscribers_lock:
            if ref in _subscribers:
                _subscribers.remove(ref)

    return unsubscribe


def notify_user_models_changed() -> None:
    """Call every subscriber; one that raises is reported as a warning and the others still run."""
    with _subscribers_lock:
        refs = list(_subscribers)
    for ref in refs:
        callback = ref() if isinstance(ref, weakref.WeakMethod) else ref
        if callback is None:
            with _subscribers_lock:
                if ref in _subscribers:
                    _subscribers.remove(ref)
            continue
        try:
            callback()
        except Exception as err:  # noqa: BLE001 - a broken subscriber must not break a save
            warnings.warn(f"user models changed: subscriber {callback!r} failed ({err})", RuntimeWarning,
                          stacklevel=2)
