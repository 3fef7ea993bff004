"""Image folders (folder:DIR): symbolic links that leave the folder, and folders with no usable image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genforge.data import load_splits
from genforge.errors import DataError
from test_data import noise_images, png_claiming, save_png


def outside_files(tmp_path: Path) -> Path:
    """A directory next to the data folder holding one secret text file and two images."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "faces").mkdir(parents=True)
    (elsewhere / "secret.png").write_text("host-name-of-the-server\n")  # an image name, text inside
    for i, img in enumerate(noise_images(2, 16, 16, seed=9)):
        save_png(elsewhere / "faces" / f"face{i}.png", img)
    return elsewhere


def test_flat_folder_skips_links_leaving_it_and_reports_them(tmp_path):
    elsewhere = outside_files(tmp_path)
    data = tmp_path / "data"
    for i, img in enumerate(noise_images(5, 16, 16)):
        save_png(data / f"img{i}.png", img)
    (data / "hostname.png").symlink_to(elsewhere / "secret.png")
    (data / "face.png").symlink_to(elsewhere / "faces" / "face0.png")
    (data / "twin.png").symlink_to(data / "img0.png")  # inside the folder: followed (and deduplicated)
    s = load_splits(f"folder:{data}", image_size=8, val_fraction=0, test_fraction=0)
    assert s.report.n_read == 6 and s.report.n_kept == 5 and s.report.dropped["duplicate"] == 1
    assert s.report.dropped["unreadable"] == 0  # the text file behind the link was never opened
    text = s.report.format()
    assert f"note: skipped 2 symbolic links that lead outside {data} or loop (not followed): " in text
    assert str(data / "face.png") in text and str(data / "hostname.png") in text
    assert "secret" not in text and str(elsewhere) not in text  # where they point is not echoed


def test_class_folders_skip_linked_directories_and_files_leaving_the_folder(tmp_path):
    elsewhere = outside_files(tmp_path)
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        for i, img in enumerate(noise_images(3, 16, 16, seed=ord(c[0]))):
            save_png(data / c / f"{i}.png", img)
    (data / "faces").symlink_to(elsewhere / "faces", target_is_directory=True)  # a whole class from outside
    (data / "cat" / "more").symlink_to(elsewhere / "faces", target_is_directory=True)  # a nested one
    (data / "dog" / "hostname.png").symlink_to(elsewhere / "secret.png")
    (data / "dog" / "loop").symlink_to(data / "dog", target_is_directory=True)  # inside, and a cycle
    (data / "cat" / "self.png").symlink_to(data / "cat" / "self.png")  # a link to itself: no target at all
    s = load_splits(f"folder:{data}", image_size=8, val_fraction=0, test_fraction=0)
    assert s.class_names == ["cat", "dog"]
    assert s.report.n_read == 6 and s.report.n_kept == 6
    (note,) = [n for n in s.report.notes if "symbolic links" in n]
    assert note.startswith(f"skipped 4 symbolic links that lead outside {data} or loop (not followed): ")
    for link in (data / "faces", data / "cat" / "more", data / "dog" / "hostname.png", data / "cat" / "self.png"):
        assert str(link) in note


def test_folder_of_only_outside_links_names_them_in_the_error(tmp_path):
    elsewhere = outside_files(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").symlink_to(elsewhere / "faces" / "face0.png")
    with pytest.raises(DataError, match=r"no image files .* found; skipped 1 symbolic links that lead outside"):
        load_splits(f"folder:{data}")


def test_folder_given_as_a_link_is_read(tmp_path):
    """The folder named in the spec may itself be a link: its target is the folder."""
    real = tmp_path / "real"
    for i, img in enumerate(noise_images(4, 16, 16)):
        save_png(real / f"{i}.png", img)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    s = load_splits(f"folder:{tmp_path / 'alias'}", image_size=8, val_fraction=0, test_fraction=0)
    assert s.report.n_kept == 4 and "symbolic" not in s.report.format()


@pytest.mark.parametrize("classes", [False, True])
def test_folder_where_every_file_is_corrupt_gives_the_report(tmp_path, classes):
    data = tmp_path / "data"
    for i in range(3):
        path = data / ("cls" if classes else "") / f"broken{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(DataError) as err:
        load_splits(f"folder:{data}", image_size=8)
    message = str(err.value)
    assert message.startswith(f"folder:{data}: no usable images remain after cleaning\n")
    assert "read 3 images, kept 0, dropped 3" in message and "unreadable" in message
    assert str(data / ("cls" if classes else "") / "broken0.png") in message


@pytest.mark.parametrize("channels", [0, 1, 3])
def test_folder_where_every_file_is_too_large_gives_the_report(tmp_path, channels):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        (data / f"huge{i}.png").write_bytes(png_claiming(5000, 5000))  # past MAX_IMAGE_PIXELS, 70 bytes
    with pytest.raises(DataError, match=r"no usable images remain after cleaning\n(.|\n)*read 2 images, kept 0"
                                        r"(.|\n)*image too large: 5000x5000 pixels"):
        load_splits(f"folder:{data}", image_size=8, channels=channels)


def test_folder_where_every_image_has_the_other_channel_count_gives_the_report(tmp_path):
    data = tmp_path / "data"
    for i, img in enumerate(noise_images(2, 16, 16, c=3)):
        save_png(data / f"c{i}.png", img)
    with pytest.raises(DataError, match=r"no usable images remain(.|\n)*wrong_channels"):
        load_splits(f"folder:{data}", image_size=8, channels=1)
    assert np.asarray(Image.open(data / "c0.png")).shape == (16, 16, 3)
