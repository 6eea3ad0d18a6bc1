"""A site's own loaders: a Python factory (``source: python``) and an image folder with
one subfolder per class (``source: images``), read from real files."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.data.loaders import LoaderError, check_loader, load_from_python, load_image_folder

SITE = {"name": "site-3", "index": 3, "group": "hospitals", "who": "site-3"}


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch):
    """Factories are named ``tests.site_loader:...``, as a config would name them: the repo
    root must be importable under plain ``pytest`` too, not only ``python -m pytest``."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))


def blobs(*args, **kwargs):
    return importlib.import_module("tests.site_loader").blobs(*args, **kwargs)


# check_loader: called while the config is validated


def test_check_loader_accepts_a_loader_and_its_own_options():
    assert check_loader("tests.site_loader:blobs", {}) is None
    assert check_loader("tests.site_loader:blobs", {"rows": 5, "seed": 1}) is None
    assert check_loader("tests.site_loader:needs_path", {"path": "/data"}) is None
    assert check_loader("tests.site_loader:with_kwargs", {"anything": 1}) is None  # **kwargs


@pytest.mark.parametrize(("factory", "options", "expected"), [
    ("tests.site_loader:blobs", {"rowz": 5},
     "has no option(s) ['rowz']; allowed: features, num_classes, rows, seed"),
    ("tests.site_loader:blobs", {"index": 2}, "option(s) ['index'] are reserved"),
    ("tests.site_loader:with_kwargs", {"group": "a"}, "option(s) ['group'] are reserved"),
    ("tests.no_such_module:blobs", {}, "module 'tests.no_such_module' not found"),
    ("tests.site_loader:nope", {}, "module 'tests.site_loader' has no attribute 'nope'"),
    ("tests.site_loader:NOT_CALLABLE", {}, "'NOT_CALLABLE' is a int, not a function"),
    ("tests.site_loader:no_site_arguments", {"rows": 3},
     "must accept the keyword arguments name, index and group (or **kwargs); it lacks name, index, group"),
    ("tests.site_loader:needs_path", {}, "needs option(s) ['path'], which have no default"),
    ("tests.site_loader.blobs", {}, "must look like 'package.module:function'"),
])
def test_check_loader_refuses_with_the_reason(factory, options, expected):
    with pytest.raises(ValueError) as caught:
        check_loader(factory, options)
    assert expected in str(caught.value)
    assert repr(factory) in str(caught.value)


# load_from_python: each return form


def test_a_pair_becomes_float32_rows_and_labels_of_their_own_dtype():
    x, y, x_test, y_test = load_from_python("tests.site_loader:blobs", {"rows": 20, "features": 5}, **SITE)
    assert x.dtype == np.float32 and x.shape == (20, 5)
    assert y.dtype == np.int64 and y.shape == (20,)
    assert x_test is None and y_test is None
    expected_x, expected_y = blobs("site-3", 3, "hospitals", rows=20, features=5)
    np.testing.assert_array_equal(x, expected_x.astype(np.float32))
    np.testing.assert_array_equal(y, expected_y)
    other, _, _, _ = load_from_python("tests.site_loader:blobs", {"rows": 20, "features": 5},
                                      **{**SITE, "index": 4})
    assert not np.allclose(x, other)  # each site draws its own rows


def test_four_parts_give_a_test_split():
    x, y, x_test, y_test = load_from_python("tests.site_loader:split_blobs", {"rows": 30, "test_rows": 10}, **SITE)
    assert (x.shape, y.shape, x_test.shape, y_test.shape) == ((30, 8), (30,), (10, 8), (10,))
    assert x_test.dtype == np.float32 and y_test.dtype == np.int64
    full_x, full_y = blobs("site-3", 3, "hospitals", rows=40)
    np.testing.assert_array_equal(x_test, full_x[30:].astype(np.float32))
    np.testing.assert_array_equal(y_test, full_y[30:])


def test_a_dict_of_lists_is_read():
    x, y, x_test, y_test = load_from_python("tests.site_loader:blobs_dict", {"rows": 7}, **SITE)
    assert x.shape == (7, 8) and x.dtype == np.float32
    assert y.tolist() == blobs("site-3", 3, "hospitals", rows=7)[1].tolist()
    assert x_test is None and y_test is None


def test_a_torch_dataset_is_stacked_into_numpy():
    x, y, x_test, _ = load_from_python("tests.site_loader:blobs_dataset", {"rows": 12, "features": 4}, **SITE)
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    assert x.shape == (12, 4) and x.dtype == np.float32
    assert y.shape == (12,) and y.dtype == np.int64
    expected_x, expected_y = blobs("site-3", 3, "hospitals", rows=12, features=4)
    np.testing.assert_allclose(x, expected_x.astype(np.float32))
    np.testing.assert_array_equal(y, expected_y)
    assert x_test is None


def test_the_site_arguments_reach_a_kwargs_loader():
    x, y, _, _ = load_from_python("tests.site_loader:with_kwargs", {}, **SITE)
    assert x.tolist() == [[3.0], [1.0]] and y.tolist() == [0, 1]


@pytest.mark.parametrize(("factory", "expected"), [
    ("tests.site_loader:failing", "raised RuntimeError: database for site-3 is offline"),
    ("tests.site_loader:not_arrays", "returned a builtins.set"),
    ("tests.site_loader:mismatched", "x has 5 rows but y has 4"),
    ("tests.site_loader:empty", "returned no rows"),
])
def test_a_bad_loader_is_reported_with_the_participant_and_factory(factory, expected):
    with pytest.raises(LoaderError) as caught:
        load_from_python(factory, {}, **SITE)
    message = str(caught.value)
    assert message.startswith(f"participant site-3: loader {factory!r}")
    assert expected in message


def test_a_missing_loader_module_names_the_participant():
    with pytest.raises(LoaderError, match=r"^participant site-3: .*module 'tests.gone' not found"):
        load_from_python("tests.gone:blobs", {}, **SITE)


# load_image_folder: a real tree of image files

COLOURS = {  # class -> one solid colour per image (RGB, or a grey level for "L" images)
    "cat": [(255, 0, 0), 40, (10, 20, 30), 200],
    "dog": [(0, 255, 0), (7, 7, 7), 0, (100, 150, 250)],
    "owl": [90, (0, 0, 255), (60, 60, 60), 255],
}
SIZES = [(10, 6), (5, 5), (32, 17), (3, 9)]  # (width, height), none equal to the target


def _write_tree(root: Path, colours: dict[str, list] = COLOURS) -> None:
    for name, images in colours.items():
        (root / name).mkdir(parents=True)
        for i, (colour, size) in enumerate(zip(images, SIZES)):
            mode = "L" if isinstance(colour, int) else "RGB"
            suffix = ".PNG" if i == 3 else ".png"  # suffixes match case-insensitively
            Image.new(mode, size, colour).save(root / name / f"img{i}{suffix}")


def _rgb(colour) -> tuple[int, int, int]:
    return (colour, colour, colour) if isinstance(colour, int) else colour


def test_an_image_tree_becomes_rgb_rows_in_class_and_file_order(tmp_path):
    _write_tree(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # ignored
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"junk")  # hidden: ignored
    (tmp_path / ".cache").mkdir()  # hidden folder: not a class
    x, y, classes = load_image_folder(tmp_path, (3, 4, 6), None, "site-1")
    assert classes == ["cat", "dog", "owl"]
    assert x.shape == (12, 3 * 4 * 6) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    expected = [_rgb(c) for name in classes for c in COLOURS[name]]
    for row, colour in zip(x, expected):
        image = row.reshape(3, 4, 6)
        for channel in range(3):
            np.testing.assert_allclose(image[channel], colour[channel] / 255, atol=1e-6)


def test_greyscale_rows_from_grey_images(tmp_path):
    _write_tree(tmp_path, {"a": [(7, 7, 7), 40], "b": [(60, 60, 60), 255]})
    x, y, classes = load_image_folder(tmp_path, (1, 3, 3), None, "site-1")
    assert x.shape == (4, 9) and y.tolist() == [0, 0, 1, 1] and classes == ["a", "b"]
    np.testing.assert_allclose(x, np.repeat([[7], [40], [60], [255]], 9, axis=1) / 255, atol=1e-6)


def test_rows_are_laid_out_channel_then_height_then_width(tmp_path):
    (tmp_path / "only").mkdir()
    pixels = np.zeros((4, 6, 3), np.uint8)  # H=4, W=6, already the target size
    pixels[..., 0] = np.arange(6) * 40  # red grows along the width
    pixels[..., 1] = (np.arange(4) * 60)[:, None]  # green grows down the height
    pixels[..., 2] = 9
    Image.fromarray(pixels, "RGB").save(tmp_path / "only" / "ramp.png")
    x, _, _ = load_image_folder(tmp_path, (3, 4, 6), None, "site-1")
    image = x[0].reshape(3, 4, 6)
    np.testing.assert_allclose(image[0, 2], np.arange(6) * 40 / 255, atol=1e-6)
    np.testing.assert_allclose(image[1, :, 5], np.arange(4) * 60 / 255, atol=1e-6)
    np.testing.assert_allclose(image[2], 9 / 255, atol=1e-6)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    (tmp_path / "scan").mkdir()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "scan" / "ct.png")
    grey, _, _ = load_image_folder(tmp_path, (1, 4, 4), None, "site-1")
    np.testing.assert_allclose(grey, 32768 / 65535, atol=1e-6)
    rgb, _, _ = load_image_folder(tmp_path, (3, 4, 4), None, "site-1")
    assert rgb.shape == (1, 48)
    np.testing.assert_allclose(rgb, 32768 / 65535, atol=1e-6)


def test_given_classes_fix_the_labels_and_a_site_may_lack_one(tmp_path):
    _write_tree(tmp_path, {"owl": COLOURS["owl"], "cat": COLOURS["cat"]})
    x, y, classes = load_image_folder(tmp_path, (3, 2, 2), ["owl", "dog", "cat"], "site-1")
    assert classes == ["owl", "dog", "cat"]
    assert y.tolist() == [2] * 4 + [0] * 4  # folders read in sorted order: cat, then owl
    np.testing.assert_allclose(x[0].reshape(3, 4)[0], 1.0)  # cat's first image: pure red
    np.testing.assert_allclose(x[0].reshape(3, 4)[1:], 0.0)
    np.testing.assert_allclose(x[4], 90 / 255, atol=1e-6)  # owl's first: grey 90


@pytest.mark.parametrize(("setup", "shape", "classes", "expected"), [
    ("extra", (3, 4, 4), ["cat", "dog"], r"subfolder\(s\) \['owl'\] that are not among the classes: cat, dog"),
    ("corrupt", (3, 4, 4), None, r"cannot read image .*dog[/\\]broken\.png: UnidentifiedImageError"),
    ("empty", (3, 4, 4), None, r"has no class subfolders$"),
    ("loose", (3, 4, 4), None, r"has no class subfolders; its 1 images must go in one subfolder per class"),
    ("no_images", (3, 4, 4), None, r"no images in .*'s class subfolders \(a, b\)"),
    ("missing", (3, 4, 4), None, r"image folder not found: .*missing"),
    ("file", (3, 4, 4), None, r"is not a folder"),
    ("tree", (4, 4, 4), None, r"image_shape \(4, 4, 4\) has 4 channels"),
    ("tree", (3, 4, 4), ["cat", "dog", "cat", "owl"], r"classes lists \['cat'\] more than once"),
])
def test_a_bad_image_folder_is_reported_with_the_participant(tmp_path, setup, shape, classes, expected):
    root = tmp_path / "site"
    if setup in ("tree", "extra", "corrupt"):
        _write_tree(root)
    if setup == "corrupt":
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    elif setup == "empty":
        root.mkdir()
    elif setup == "loose":
        root.mkdir()
        Image.new("L", (2, 2)).save(root / "stray.png")
    elif setup == "no_images":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("x")
    elif setup == "file":
        root.write_text("not a folder")
    else:
        root = tmp_path / "missing" if setup == "missing" else root
    with pytest.raises(LoaderError, match=r"^participant site-9: .*" + expected):
        load_image_folder(root, shape, classes, "site-9")
