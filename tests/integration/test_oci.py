"""OCI images as VMs, through the real CLI, on a hand-made image (tests/oci_images.py: two layers, whiteouts).

Two boots in all. The first (``launch --oci DIR:TAG -- wait ...``): the main process's output and exit code (7),
its env, workdir and user, layer 2's whiteouts applied, ``corral exec`` beside it while it runs, ``corral
stop`` as SIGTERM to it. The second: the
same image as a ``docker save`` tarball, through skopeo, ``images import --oci`` then ``launch --image``, its own
cmd, its own exit. Bad input (a missing path, a tarball that is no image, an unknown tag) boots nothing.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, until
from tests.oci_images import CONFIG, busybox, make_docker_archive, make_layout

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def _images(c: CorralEnv) -> set[str]:
    return {m["name"] for m in json.loads(c.cli("images", "ls", "--json").stdout)}


def _leftovers(c: CorralEnv) -> list[str]:
    return sorted(p.name for p in c.settings.images_dir.iterdir() if p.name != "tiny")


def test_oci_image_runs_as_a_vm(corral: CorralEnv, tmp_path: Path) -> None:
    bb = busybox(corral.settings.cache, corral.settings.mirror)
    layout = tmp_path / "layout"
    digest = make_layout(layout, bb, tag="v1")

    # Bad input first: one line each, non-zero, nothing left behind (no VM, no image, no work directory).
    notimage = tmp_path / "notimage.tar"
    with tarfile.open(notimage, "w") as t:
        t.add(layout / "oci-layout", arcname="hello.txt")
    for args, code, words in [
        (("--oci", str(tmp_path / "missing")), 3, "no such file or directory"),
        (("--oci", str(notimage)), 2, "not an image"),
        (("--oci", f"{layout}:v2"), 3, "no tag 'v2' (tags: v1)"),
    ]:
        r = corral.cli("launch", "bad", *args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a registry: none is reachable here, so only its error is tested (skopeo's own, on one line)
    r = corral.cli("images", "import", "--oci", "docker://127.0.0.1:9/none:latest")
    assert r.returncode == 1 and "connection refused" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "level=fatal" not in r.stderr, r.stderr
    r = corral.cli("launch", "bad", "--", "echo")  # -- ARGS only replace an OCI image's cmd
    assert r.returncode == 2 and "not an OCI image" in r.stderr, r.stderr
    assert corral.cli("ls", "--json").stdout.strip() == "[]"
    assert _images(corral) == {"tiny"} and _leftovers(corral) == []

    # Boot 1: launch --oci with -- ARGS replacing the image's cmd; the entrypoint waits for /tmp/go.
    r = corral.cli("launch", "app", "--oci", f"{layout}:v1", "--disk", "2G", "--", "wait", "two words")
    assert r.returncode == 0, r.stderr
    assert "main process: /bin/sh /entry.sh wait two words" in r.stdout, r.stdout
    r = corral.cli("wait", "app", "--ready", "--timeout", "240")
    assert r.returncode == 0, r.stderr
    # the agent beside the main process: Corral's own, under /.corral, while the image's process runs as uid 1000
    r = corral.cli("exec", "app", "--", "sh", "-c", 'ls /.corral/usr/sbin; read p < /run/corral/main.pid; '
                   'cat /proc/$p/cmdline; echo; while read k v r; do [ "$k" = Uid: ] && echo "uid $v"; done '
                   '< /proc/$p/status; true')
    assert (r.returncode, r.stdout) == (0, "qemu-ga\nresize2fs\n/bin/sh\0/entry.sh\0wait\0two words\0\nuid 1000\n"), \
        (r.stdout, r.stderr)
    # the root grew to --disk (Corral's resize2fs, in the background beside the main process)
    def root_kib() -> int:
        df = corral.cli("exec", "app", "--", "/.corral/bin/df", "-k", "/").stdout.strip().splitlines()
        return int(df[-1].split()[1]) if len(df) == 2 else 0

    until(lambda: root_kib() > 1_800_000, 240, "the root file system to grow to --disk 2G")
    r = corral.cli("stop", "app")  # the power button: SIGTERM to the main process, which exits 7
    assert r.returncode == 0, r.stderr
    r = corral.cli("wait", "app", "--exit-code", "--timeout", "240")
    assert r.returncode == 7, (r.stdout, r.stderr)
    assert "exited with code 7" in r.stdout
    log = corral.cli("logs", "app").stdout
    for line in ("args: wait two words", "user: 1000:1000", "cwd: /home/app", "greeting: hello oci",
                 "old: absent", "new: from layer 2", "opaque: b ", "term: seen"):
        assert line in log, (line, log[-2000:])
    v = json.loads(corral.cli("show", "app", "--json").stdout)
    assert (v["state"], v["exit_code"]) == ("stopped", 7)
    assert "exit code:" in corral.cli("show", "app").stdout
    image = v["spec"]["image"]
    assert image == f"oci-{digest.removeprefix('sha256:')[:12]}"
    m = json.loads(corral.cli("images", "ls", "--json").stdout)
    oci = next(x for x in m if x["name"] == image)
    assert oci["source_sha256"] == digest.removeprefix("sha256:") and oci["oci"]["user"] == "app"

    # The same image again under the same name: nothing new to do.
    r = corral.cli("images", "import", "--oci", str(layout))
    assert r.returncode == 0 and image in r.stdout, r.stderr

    # Boot 2: a docker-save tarball (another config: no user, its own cmd), through skopeo, imported then launched.
    tarball = tmp_path / "saved.tar"
    make_docker_archive(tarball, bb, dict(CONFIG, User="", Cmd=["from", "docker"], WorkingDir="/data"))
    r = corral.cli("images", "import", "--oci", str(tarball), "--name", "saved")
    assert r.returncode == 0, r.stderr
    assert "runs /bin/sh /entry.sh from docker" in r.stdout, r.stdout
    r = corral.cli("launch", "again", "--image", "saved")
    assert r.returncode == 0, r.stderr
    r = corral.cli("wait", "again", "--exit-code", "--timeout", "240")
    assert r.returncode == 7, (r.stdout, r.stderr)
    v = json.loads(corral.cli("show", "again", "--json").stdout)
    assert (v["state"], v["exit_code"], v["last_exit_reason"]) == ("stopped", 7, "its main process exited with code 7")
    log = corral.cli("logs", "again").stdout
    for line in ("args: from docker", "user: 0:0", "cwd: /data", "old: absent", "new: from layer 2"):
        assert line in log, (line, log[-2000:])
    assert _leftovers(corral) == sorted([image, "saved"])
