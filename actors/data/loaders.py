"""A site's own data readers: a user's Python loader (``source: python``) and an image
folder with one subfolder per class (``source: images``).

Both run inside the participant's actor, on the node that holds the data, so every error
names the participant and the factory, folder or file: the person reading it is on
another machine. :func:`check_loader` checks a loader against its signature while the
config is validated, before Ray starts. Neither torch nor Pillow is imported here until
a loader's result or an image folder needs it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

RESERVED = ("name", "index", "group")
"""Keyword arguments every loader is called with; they cannot also be options."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
"""Pillow modes of 16-bit greyscale (medical and scientific images): scaled by 65535, since
Pillow's own conversion to 8 bits clips them."""


class LoaderError(ValueError):
    """A site's loader or image folder cannot be used; the message says whose and why."""


def resolve_loader(factory: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function, or ValueError saying what is wrong."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"loader factory {factory!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ValueError(f"loader factory {factory!r}: module {module_name!r} not found") from None
        raise ValueError(f"loader factory {factory!r}: importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ValueError(
            f"loader factory {factory!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, attr):
        raise ValueError(f"loader factory {factory!r}: module {module_name!r} has no attribute {attr!r}")
    function = getattr(module, attr)
    if not callable(function):
        raise ValueError(
            f"loader factory {factory!r}: {attr!r} is a {type(function).__name__}, not a function"
        )
    return function


def check_loader(factory: str, options: dict[str, Any]) -> None:
    """Resolve ``factory`` and check that ``function(name=, index=, group=, **options)``
    fits its signature; raise ValueError (it runs inside pydantic validation)."""
    function = resolve_loader(factory)
    clash = sorted(set(options) & set(RESERVED))
    if clash:
        raise ValueError(
            f"loader factory {factory!r}: option(s) {clash} are reserved: every loader is "
            f"called with {', '.join(RESERVED)} by the participant"
        )
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): accept any
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    keyword = {p.name: p for p in params
               if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    missing = [r for r in RESERVED if r not in keyword]
    if missing:
        raise ValueError(
            f"loader factory {factory!r} must accept the keyword arguments name, index and group "
            f"(or **kwargs); it lacks {', '.join(missing)}"
        )
    allowed = sorted(set(keyword) - set(RESERVED))
    unknown = sorted(set(options) - set(keyword))
    if unknown:
        raise ValueError(
            f"loader factory {factory!r} has no option(s) {unknown}; allowed: {', '.join(allowed) or 'none'}"
        )
    needed = [p.name for p in params if p.default is inspect.Parameter.empty
              and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
              and p.name not in RESERVED and p.name not in options]
    if needed:
        raise ValueError(f"loader factory {factory!r} needs option(s) {needed}, which have no default")


def load_from_python(
    factory: str, options: dict[str, Any], name: str, index: int, group: str, who: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Call a site's loader and normalise what it returns to
    ``(x float32, y, x_test float32 | None, y_test | None)``; y keeps its dtype.

    Accepted: ``(x, y)``, ``(x, y, x_test, y_test)``, a dict with keys ``x``, ``y`` and
    optionally ``x_test``, ``y_test``, or a dataset (``len`` and ``[i] -> (x, y)``, such as
    a torch ``Dataset``), of numpy arrays, lists or torch tensors.
    """
    where = f"participant {who}: loader {factory!r}"
    try:
        function = resolve_loader(factory)
    except ValueError as exc:
        raise LoaderError(f"participant {who}: {exc}") from None
    try:
        result = function(name=name, index=index, group=group, **options)
    except Exception as exc:  # noqa: BLE001 - any failure is the site's loader
        raise LoaderError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    parts = _parts(result, where)
    x, y = _features(parts[0], where, "x"), _labels(parts[1], where, "y")
    _same_length(x, y, where, "x", "y")
    if len(x) == 0:
        raise LoaderError(f"{where} returned no rows")
    if len(parts) == 2 or (parts[2] is None and parts[3] is None):
        return x, y, None, None
    if parts[2] is None or parts[3] is None:
        raise LoaderError(f"{where} returned only one of x_test and y_test; give both or neither")
    x_test, y_test = _features(parts[2], where, "x_test"), _labels(parts[3], where, "y_test")
    _same_length(x_test, y_test, where, "x_test", "y_test")
    if len(x_test) and x_test.shape[1:] != x.shape[1:]:
        raise LoaderError(
            f"{where}: x_test rows have shape {x_test.shape[1:]}, x rows {x.shape[1:]}; they must match"
        )
    return x, y, x_test, y_test


def _parts(result: Any, where: str) -> tuple[Any, ...]:
    """The loader's result as ``(x, y)`` or ``(x, y, x_test, y_test)``, still array-likes."""
    if isinstance(result, Mapping):
        keys = set(result)
        unknown = sorted(map(str, keys - {"x", "y", "x_test", "y_test"}))
        if unknown or not {"x", "y"} <= keys:
            raise LoaderError(
                f"{where} returned a dict with keys {sorted(map(str, keys))}; expected x, y "
                "and optionally x_test, y_test"
            )
        return result["x"], result["y"], result.get("x_test"), result.get("y_test")
    if isinstance(result, (tuple, list)):
        if len(result) not in (2, 4):
            raise LoaderError(
                f"{where} returned a {type(result).__name__} of {len(result)} items; expected "
                "(x, y) or (x_train, y_train, x_test, y_test)"
            )
        return tuple(result)
    if _is_dataset(result):
        return _stack_dataset(result, where)
    raise LoaderError(
        f"{where} returned a {type(result).__module__}.{type(result).__qualname__}; expected "
        "(x, y), (x_train, y_train, x_test, y_test), a dict with keys x and y, or a dataset "
        "of (x, y) pairs"
    )


def _is_dataset(value: Any) -> bool:
    """Indexable and sized, and not itself an array (an array alone has no labels)."""
    if isinstance(value, (np.ndarray, str, bytes)) or _is_tensor(value):
        return False
    return hasattr(value, "__len__") and hasattr(value, "__getitem__")


def _stack_dataset(dataset: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A dataset of ``(x, y)`` pairs -> stacked ``(x, y)`` arrays."""
    kind = type(dataset).__qualname__
    try:
        size = len(dataset)
    except Exception as exc:  # noqa: BLE001 - e.g. an IterableDataset's __len__
        raise LoaderError(f"{where} returned a {kind} whose len() raised {type(exc).__name__}: {exc}") from None
    xs, ys = [], []
    for i in range(size):
        try:
            item = dataset[i]
        except Exception as exc:  # noqa: BLE001 - the site's dataset code
            raise LoaderError(f"{where}: {kind}[{i}] raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise LoaderError(
                f"{where}: {kind}[{i}] is a {type(item).__name__}, expected an (x, y) pair"
            )
        xs.append(_to_numpy(item[0]))
        ys.append(_to_numpy(item[1]))
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    try:
        return np.stack(xs), np.stack(ys)
    except ValueError as exc:
        raise LoaderError(f"{where}: the {kind}'s items cannot be stacked: {exc}") from None


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch is already imported
    return torch is not None and isinstance(value, torch.Tensor)


def _to_numpy(value: Any) -> np.ndarray:
    """numpy array, torch tensor, number or (nested) list -> numpy array."""
    if _is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and any(_is_tensor(v) for v in value):
        return np.stack([_to_numpy(v) for v in value])
    return np.asarray(value)


def _features(value: Any, where: str, what: str) -> np.ndarray:
    try:
        x = _to_numpy(value).astype(np.float32, copy=False)
    except (TypeError, ValueError) as exc:
        raise LoaderError(f"{where}: {what} cannot be read as float32 numbers: {exc}") from None
    if x.ndim == 0:
        raise LoaderError(f"{where}: {what} is a single value; it needs one row per example")
    if not np.isfinite(x).all():
        raise LoaderError(f"{where}: {what} has missing or non-finite values")
    return x


def _labels(value: Any, where: str, what: str) -> np.ndarray:
    try:
        y = _to_numpy(value)
    except (TypeError, ValueError) as exc:
        raise LoaderError(f"{where}: {what} cannot be read as an array: {exc}") from None
    if y.ndim == 0:
        raise LoaderError(f"{where}: {what} is a single value; it needs one label per example")
    return y


def _same_length(x: np.ndarray, y: np.ndarray, where: str, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise LoaderError(f"{where}: {x_name} has {len(x)} rows but {y_name} has {len(y)}")


def load_image_folder(
    root: str | Path, image_shape: tuple[int, int, int], classes: list[str] | None, who: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``root/<class>/<image>`` into rows of ``C*H*W`` floats in [0, 1] laid out as
    ``(C, H, W)``, int64 labels in the order of ``classes`` (default: the sorted
    subfolder names), and the class list used. Files are read in sorted order."""
    try:
        from PIL import Image
    except ImportError:
        raise LoaderError(
            f'participant {who}: reading images needs Pillow: pip install "fedray[images]" '
            "(or pip install pillow)"
        ) from None
    c, h, w = image_shape
    if c not in (1, 3):
        raise LoaderError(
            f"participant {who}: image_shape {tuple(image_shape)} has {c} channels; use 1 "
            "(greyscale) or 3 (RGB)"
        )
    root = Path(root)
    files, labels, names = _image_files(root, classes, who)
    x = np.empty((len(files), c * h * w), np.float32)
    for row, path in enumerate(files):
        try:
            with Image.open(path) as image:
                x[row] = _pixels(image, c, h, w, Image.Resampling.BILINEAR).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the site's file
            raise LoaderError(
                f"participant {who}: cannot read image {path}: {type(exc).__name__}: {exc}"
            ) from None
    return x, np.asarray(labels, np.int64), names


def _pixels(image: Any, c: int, h: int, w: int, resample: Any) -> np.ndarray:
    """One image as a ``(C, H, W)`` float32 array in [0, 1]."""
    if image.mode in _WIDE_GREY or image.mode == "F":
        grey = np.asarray(image.convert("F").resize((w, h), resample), np.float32)
        if image.mode != "F":
            grey = np.clip(grey / 65535.0, 0.0, 1.0)
        return np.broadcast_to(grey, (c, h, w))
    pixels = np.asarray(image.convert("L" if c == 1 else "RGB").resize((w, h), resample), np.float32)
    pixels = pixels / np.float32(255.0)
    return pixels[None] if c == 1 else pixels.transpose(2, 0, 1)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _image_files(root: Path, classes: list[str] | None, who: str) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``root``'s class subfolders (sorted), their labels, the classes."""
    if not root.exists():
        raise LoaderError(f"participant {who}: image folder not found: {root}")
    if not root.is_dir():
        raise LoaderError(f"participant {who}: {root} is not a folder (expected one subfolder per class)")
    try:
        entries = list(root.iterdir())
    except OSError as exc:
        raise LoaderError(f"participant {who}: cannot list {root}: {exc}") from None
    folders = sorted(p.name for p in entries if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in entries)
        hint = f"; its {loose} images must go in one subfolder per class" if loose else ""
        raise LoaderError(f"participant {who}: {root} has no class subfolders{hint}")
    if classes is None:
        names = folders
    else:
        names = list(classes)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LoaderError(f"participant {who}: classes lists {repeated} more than once")
        stray = [f for f in folders if f not in names]
        if stray:
            raise LoaderError(
                f"participant {who}: {root} has subfolder(s) {stray} that are not among the "
                f"classes: {', '.join(names)}"
            )
    files: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        found = sorted(p for p in (root / folder).rglob("*") if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p, root))
        files += found
        labels += [names.index(folder)] * len(found)
    if not files:
        raise LoaderError(
            f"participant {who}: no images in {root}'s class subfolders ({', '.join(folders)}); "
            f"accepted: {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return files, labels, names
