"""`corral launch [NAME] --oci REF [-- ARGS]`: which words are the VM's name and which replace the image's cmd, and
local references made absolute for the daemon (whose working directory is not the user's)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import typer

from corral.cli.images import absolute_oci_ref
from corral.cli.vm import _split_command


@pytest.mark.parametrize(("argv", "name", "rest", "want"), [
    (["launch", "web", "--oci", "x"], "web", None, ("web", None)),
    (["launch", "web", "--oci", "x", "--", "echo", "hi"], "web", ["echo", "hi"], ("web", ["echo", "hi"])),
    (["launch", "--oci", "x", "--", "echo", "hi"], "echo", ["hi"], (None, ["echo", "hi"])),  # no name given
    (["launch", "--oci", "x", "--", "a", "--", "b"], "a", ["--", "b"], (None, ["a", "--", "b"])),
])
def test_words_after_dashdash_replace_cmd(monkeypatch: pytest.MonkeyPatch, argv: list[str], name: str | None,
                                          rest: list[str] | None, want: tuple[str | None, list[str] | None]) -> None:
    monkeypatch.setattr(sys, "argv", ["corral", *argv])
    assert _split_command(name, rest) == want


def test_two_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["corral", "launch", "a", "b"])
    with pytest.raises(typer.Exit) as exc:
        _split_command("a", ["b"])
    assert exc.value.exit_code == 2


def test_local_references_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "layout").mkdir()
    (tmp_path / "saved.tar").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert absolute_oci_ref("layout:v1") == f"{tmp_path}/layout:v1"
    assert absolute_oci_ref("layout") == f"{tmp_path}/layout"
    assert absolute_oci_ref("saved.tar") == f"{tmp_path}/saved.tar"
    assert absolute_oci_ref("./missing") == f"{tmp_path}/missing"  # still a path: the daemon says it is missing
    assert absolute_oci_ref("docker://registry/app:1") == "docker://registry/app:1"
    assert absolute_oci_ref("debian:12") == "debian:12"  # a registry name, not a local path
    assert os.getcwd() == str(tmp_path)
