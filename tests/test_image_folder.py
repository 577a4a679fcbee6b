"""eval --data DIR: every image under a class folder is in the run (nested, broken or looping links included, so
they fail their own rows); everything else is skipped, counted by reason and said once."""

import os

import pytest

from diffcls_fast import UserError
from diffcls_fast.image_folder import load_image_folder


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_nested_images_links_and_skips_are_all_accounted_for(tmp_path):
    root = tmp_path / "data"
    _touch(root / "cat" / "a.png")
    _touch(root / "cat" / "sub" / "deeper" / "b.JPG")  # nested, upper-case suffix
    _touch(root / "cat" / "notes.txt")
    _touch(root / "cat" / "README")
    _touch(root / "cat" / ".DS_Store")
    os.symlink(root / "cat" / "gone.png", root / "cat" / "broken.png")  # a broken link with an image suffix
    os.symlink("loop.png", root / "cat" / "loop.png")  # a link to itself
    os.symlink(root / "cat", root / "cat" / "sub" / "up")  # a folder link back up the tree
    os.symlink(root / "nowhere", root / "cat" / "dangling")  # a broken link, no image suffix
    _touch(root / "dog" / "c.webp")
    os.mkfifo(root / "dog" / "pipe.png")
    _touch(root / "stray.png")  # outside any class folder
    paths, labels, classes, ids, skipped = load_image_folder(root)
    assert classes == ["cat", "dog"]
    assert ids == ["cat/a.png", "cat/broken.png", "cat/loop.png", "cat/sub/deeper/b.JPG", "dog/c.webp"]
    assert labels.tolist() == [0, 0, 0, 0, 1]
    assert dict(skipped) == {
        "files with other suffixes (.txt)": 1,
        "files with other suffixes (none)": 1,
        "hidden entries": 1,
        "folders reached twice through symlinks": 1,
        "broken symlinks without an image suffix": 1,
        "special files (pipes, devices, sockets)": 1,
        "files outside class folders": 1,
    }
    assert "1 files with other suffixes (.txt)" in skipped.describe()


def test_no_images_says_what_was_skipped(tmp_path):
    _touch(tmp_path / "cat" / "a.txt")
    with pytest.raises(UserError, match=r"no images found \(skipped: 1 files with other suffixes \(.txt\)\)"):
        load_image_folder(tmp_path)


def test_two_class_names_for_one_folder_are_refused(tmp_path):
    _touch(tmp_path / "cat" / "a.png")
    os.symlink(tmp_path / "cat", tmp_path / "kitten")
    with pytest.raises(UserError, match="the same folder as another class"):
        load_image_folder(tmp_path)


def test_eval_warns_once_with_the_counts_and_gone_images_fail_their_rows(tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    root = tmp_path / "data"
    for name, src in (("seven", "examples/digit-7.png"), ("three", "examples/digit-3.png")):
        (root / name / "nested").mkdir(parents=True)
        Image.open(src).save(root / name / "nested" / "a.png")
    os.symlink(root / "seven" / "gone.png", root / "seven" / "broken.png")
    _touch(root / "three" / "labels.csv")
    r = subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", "eval", "--data", str(root), "--policy", "halving", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 1, r.stderr  # the broken link's image failed; the others were answered
    s = json.loads(r.stdout.splitlines()[-1])
    assert s["images"] == 3 and s["failed"] == 1 and s["accuracy"] == pytest.approx(2 / 3), s
    warning = [line for line in r.stderr.splitlines() if "skipped" in line]
    assert warning == [f"diffcls-fast: warning: --data {root}: 3 images; skipped 1 files with other suffixes (.csv)"]
