"""OCI references, layouts and configs (corral.images.oci.layout), the main process as shell words for Corral's init
(corral.images.oci.guest, run through a real POSIX sh), `-- ARGS` on the kernel command line, and the exit code read
back from a serial log (corral.vm.logs)."""

from __future__ import annotations

import base64
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from corral.engine.cmdline import encode_command
from corral.errors import ImageError, InvalidInput, NotFound
from corral.images.oci.guest import INIT, process_file
from corral.images.oci.layout import DEFAULT_PATH, OciProcess, classify, process_of, resolve
from corral.paths import VMPaths
from corral.vm.logs import EXITED_MARK, STARTED_MARK, main_exit_code
from corral.vm.spec import MAX_COMMAND, VMSpec
from tests.oci_images import CONFIG, make_docker_archive, make_layout

FAKE_BUSYBOX = b"\x7fELF not really busybox"
TRICKY = ["it's", "two words", "$HOME", "`id`", 'a"b', "back\\slash", "*", ""]


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "layout", make_layout(tmp_path / "layout", FAKE_BUSYBOX, tag="v1")


def test_references_are_classified(tmp_path: Path, layout: tuple[Path, str]) -> None:
    path, _ = layout
    assert classify(str(path)).skopeo() == f"oci:{path}"
    assert classify(f"{path}:v1").skopeo() == f"oci:{path}:v1"
    saved = tmp_path / "saved.tar"
    make_docker_archive(saved, FAKE_BUSYBOX, CONFIG)
    assert classify(str(saved)).skopeo() == f"docker-archive:{saved}"
    assert classify("docker://registry.example/app:1").skopeo() == "docker://registry.example/app:1"
    assert classify("debian:12").kind == "registry"


def test_bad_references_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file or directory"):
        classify(str(tmp_path / "missing"))
    with pytest.raises(NotFound):
        classify(str(tmp_path / "missing.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="not an OCI image layout"):
        classify(str(tmp_path / "empty"))
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as t:
        t.add(tmp_path / "empty", arcname="hello")
    with pytest.raises(InvalidInput, match="not an image"):
        classify(str(other))
    (tmp_path / "text").write_text("not a tarball")
    with pytest.raises(InvalidInput, match="neither an OCI layout directory nor a tarball"):
        classify(str(tmp_path / "text"))


def test_a_layout_resolves_to_its_manifest_and_config(layout: tuple[Path, str]) -> None:
    path, digest = layout
    got, manifest, config = resolve(path, "v1")
    assert got == digest and len(manifest["layers"]) == 2
    assert config["config"]["User"] == "app"
    assert resolve(path)[0] == digest  # the only image, without a tag
    with pytest.raises(NotFound, match=r"no tag 'v2' \(tags: v1\)"):
        resolve(path, "v2")


def test_a_damaged_blob_is_refused(layout: tuple[Path, str]) -> None:
    path, digest = layout
    blob = path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"schemaVersion", b"schemaVersioN"))
    with pytest.raises(ImageError, match="does not match its digest"):
        resolve(path, "v1")


def test_the_config_becomes_the_main_process() -> None:
    p = process_of({"config": CONFIG})
    assert p.argv() == ["/bin/sh", "/entry.sh", "default", "cmd"]
    assert p.argv(["x", "y"]) == ["/bin/sh", "/entry.sh", "x", "y"]  # -- ARGS replace cmd, as docker run does
    assert (p.env, p.workdir, p.user) == (["PATH=/bin", "GREETING=hello oci"], "/home/app", "app")
    bare = process_of({})
    assert (bare.argv(), bare.env, bare.workdir) == ([], [f"PATH={DEFAULT_PATH}"], "/")
    for bad in ({"Env": ["NOEQUALS"]}, {"Env": "PATH=/bin"}, {"WorkingDir": "relative"}, {"Cmd": [1]}):
        with pytest.raises(ImageError):
            process_of({"config": bad})


def _sh(script: str, cwd: Path) -> list[str]:
    r = subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True, check=True)
    return r.stdout.split("\0")[:-1]


def test_process_words_survive_the_init_shell(tmp_path: Path) -> None:
    """What the init evals is exactly the image's words, and `-- ARGS` as the kernel command line carries them."""
    p = OciProcess(entrypoint=["/bin/echo", *TRICKY], cmd=["c d"], env=["A=x y", "B=it's"], workdir="/w w", uid=1000)
    (tmp_path / "process").write_text(process_file(p))
    argv = _sh('. ./process; eval "set -- $CORRAL_ENTRYPOINT $CORRAL_CMD"; printf "%s\\0" "$@"', tmp_path)
    assert argv == p.argv()
    env = _sh('. ./process; eval "set -- $CORRAL_ENV"; printf "%s\\0" "$@" "$CORRAL_WORKDIR" "$CORRAL_UID"', tmp_path)
    assert env == ["A=x y", "B=it's", "/w w", "1000"]
    encoded = encode_command(TRICKY)
    assert all(c.isalnum() or c in "+/=" for c in encoded)  # one word on the kernel command line
    (tmp_path / "cmd").write_text(base64.b64decode(encoded).decode())
    assert _sh('. ./process; cmd=$(cat cmd); eval "set -- $CORRAL_ENTRYPOINT $cmd"; printf "%s\\0" "$@"',
               tmp_path) == p.argv(TRICKY)
    assert "@STARTED@" in INIT and "@EXITED@$code" in INIT  # filled with the markers the daemon reads


def test_the_exit_code_is_read_from_the_last_run(tmp_path: Path) -> None:
    paths = VMPaths(tmp_path)
    assert main_exit_code(paths) is None
    paths.serial_log.write_text(f"boot\r\n{STARTED_MARK}\r\n{EXITED_MARK}99 (printed by the process)\r\n"
                                f"{EXITED_MARK}7\r\n")
    assert main_exit_code(paths) == 7
    with open(paths.serial_log, "a") as f:
        f.write(f"{STARTED_MARK}\r\nkilled before it ended\r\n")
    assert main_exit_code(paths) is None  # this run printed none: not the last run's code


def test_the_command_is_checked_and_goes_on_the_kernel_command_line() -> None:
    from tests.unit.engine.test_cmdline import argv, opt

    assert "corral.cmd=" not in opt(argv(), "-append")[0]
    append = opt(argv(command=["echo", "two words"]), "-append")[0]
    assert f"corral.cmd={encode_command(['echo', 'two words'])}" in append.split()
    with pytest.raises(ValueError, match="empty"):
        VMSpec(name="web", command=[])
    with pytest.raises(ValueError, match="longer than"):
        VMSpec(name="web", command=["x" * MAX_COMMAND])
    assert json.loads(VMSpec(name="web").model_dump_json())["command"] is None
