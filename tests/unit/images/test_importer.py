"""Pure parts of the importer."""

from __future__ import annotations

import pytest

from corral.images.importer import url_file_name


@pytest.mark.parametrize(("url", "name"), [
    ("https://cloud.debian.org/images/debian-12-genericcloud-amd64.qcow2", "debian-12-genericcloud-amd64.qcow2"),
    ("http://host/dir/disk.raw?token=a/b#frag", "disk.raw"),
    ("http://host/", "image"),
    ("http://host", "image"),
    ("http://host/a/..", "image"),
    ("http://host/a/.", "image"),
])
def test_url_file_name_is_never_empty_or_a_dot(url: str, name: str) -> None:
    assert url_file_name(url) == name
