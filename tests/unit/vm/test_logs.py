from pathlib import Path

from corral.paths import VMPaths
from corral.vm.logs import read_log_from, render_logs


def test_follow_reads_only_what_is_new_and_restarts_after_rotation(tmp_path: Path) -> None:
    paths = VMPaths(tmp_path)
    assert read_log_from(paths, 0) == (b"", 0)
    paths.serial_log.write_bytes(b"boot\n")
    data, off = read_log_from(paths, 0)
    assert (data, off) == (b"boot\n", 5)
    with paths.serial_log.open("ab") as f:
        f.write(b"login\n")
    assert read_log_from(paths, off) == (b"login\n", 11)
    paths.serial_log.replace(tmp_path / "serial.log.1")  # rotated
    paths.serial_log.write_bytes(b"new\n")
    assert read_log_from(paths, 11) == (b"new\n", 4)
    assert render_logs(paths, None) == "boot\nlogin\nnew\n"
    assert render_logs(paths, 2) == "login\nnew\n"
    assert render_logs(paths, 0) == ""
