"""Host settings: loaded from the environment, then defaulted, then validated (three separate steps).

Precedence: an environment variable beats the default. Every setting is read once, when the daemon or CLI starts.

==========================  =====================================  ==============================================
variable                    default                                meaning
==========================  =====================================  ==============================================
CORRAL_HOME                 ~/.local/share/corral                  the Corral home (socket, store, VMs, images)
CORRAL_CACHE                ~/.cache/corral                        downloaded packages and built images
CORRAL_MIRROR               http://deb.debian.org/debian           Debian archive the image builder fetches from
CORRAL_ACCEL                auto                                   auto (probe KVM, else TCG), kvm or tcg
CORRAL_MEMORY_OVERCOMMIT    1.0                                    guest memory allowed, as a multiple of host RAM
CORRAL_CPU_OVERCOMMIT       4.0                                    vCPUs of running VMs allowed, x host threads
CORRAL_TCG_TB_SIZE          32                                     TCG translation cache per VM, MiB
CORRAL_QEMU                 qemu-system-x86_64                     the QEMU binary
CORRAL_EXPIRY_INTERVAL      5                                      seconds between the daemon's expiry checks
CORRAL_EXPIRY_WARNING       3600                                   longest warning before expiry, seconds
CORRAL_EXPIRY_WARNING_FRACTION  0.1                                warning before expiry, fraction of the lifetime
CORRAL_BACKUP_CHECK_INTERVAL  30                                   seconds between the daemon's backup schedule checks
CORRAL_IDLE_INTERVAL        10                                     seconds between samples of VMs' activity
CORRAL_LISTEN               (none)                                 ADDR:PORT: serve the API over TCP with TLS too
CORRAL_TLS_CERT             (none: self-signed, made under home)   PEM certificate of the TCP listener
CORRAL_TLS_KEY              (none)                                 PEM key of CORRAL_TLS_CERT
CORRAL_METRICS_INTERVAL     10                                     seconds between the metrics sampler's passes
==========================  =====================================  ==============================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral import paths
from corral.errors import InvalidInput


@dataclass(frozen=True)
class Settings:
    home: Path
    cache: Path
    mirror: str
    accel: str
    memory_overcommit: float
    cpu_overcommit: float
    tcg_tb_size_mib: int
    qemu_binary: str
    expiry_interval: float = 5.0
    expiry_warning: float = 3600.0
    expiry_warning_fraction: float = 0.1
    backup_check_interval: float = 30.0
    idle_interval: float = 10.0
    listen: str | None = None  # "ADDR:PORT": the TCP listener (corral.auth.listener); None: the unix socket only
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_interval: float = 10.0

    @property
    def socket(self) -> Path:
        return self.home / paths.DAEMON_SOCKET

    @property
    def database(self) -> Path:
        return self.home / paths.DATABASE

    @property
    def images_dir(self) -> Path:
        return self.home / paths.IMAGES_DIR

    @property
    def vms_dir(self) -> Path:
        return self.home / paths.VMS_DIR

    def vm_paths(self, name: str) -> paths.VMPaths:
        return paths.VMPaths(self.vms_dir / name)


def _load(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("CORRAL_") and v != ""}


def _defaults(raw: dict[str, str]) -> dict[str, str]:
    xdg_data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return {
        "CORRAL_HOME": str(Path(xdg_data) / "corral"),
        "CORRAL_CACHE": str(Path(xdg_cache) / "corral"),
        "CORRAL_MIRROR": "http://deb.debian.org/debian",
        "CORRAL_ACCEL": "auto",
        "CORRAL_MEMORY_OVERCOMMIT": "1.0",
        "CORRAL_CPU_OVERCOMMIT": "4.0",
        "CORRAL_TCG_TB_SIZE": "32",
        "CORRAL_QEMU": "qemu-system-x86_64",
        "CORRAL_EXPIRY_INTERVAL": "5",
        "CORRAL_EXPIRY_WARNING": "3600",
        "CORRAL_EXPIRY_WARNING_FRACTION": "0.1",
        "CORRAL_BACKUP_CHECK_INTERVAL": "30",
        "CORRAL_IDLE_INTERVAL": "10",
        "CORRAL_METRICS_INTERVAL": "10",
    } | raw


def _validate(v: dict[str, str]) -> Settings:
    accel = v["CORRAL_ACCEL"]
    if accel not in ("auto", "kvm", "tcg"):
        raise InvalidInput(f"CORRAL_ACCEL={accel!r} is not valid: use auto, kvm or tcg")
    try:
        overcommit = float(v["CORRAL_MEMORY_OVERCOMMIT"])
        cpu_overcommit = float(v["CORRAL_CPU_OVERCOMMIT"])
        tb = int(v["CORRAL_TCG_TB_SIZE"])
        interval = float(v["CORRAL_EXPIRY_INTERVAL"])
        warning = float(v["CORRAL_EXPIRY_WARNING"])
        fraction = float(v["CORRAL_EXPIRY_WARNING_FRACTION"])
        backup_check = float(v["CORRAL_BACKUP_CHECK_INTERVAL"])
        idle_interval = float(v["CORRAL_IDLE_INTERVAL"])
        metrics_interval = float(v["CORRAL_METRICS_INTERVAL"])
    except ValueError as exc:
        raise InvalidInput(f"bad number in Corral settings: {exc}") from exc
    if not 0.1 <= overcommit <= 100:
        raise InvalidInput(f"CORRAL_MEMORY_OVERCOMMIT={overcommit} is out of range: use 0.1 to 100")
    if not 0.1 <= cpu_overcommit <= 100:
        raise InvalidInput(f"CORRAL_CPU_OVERCOMMIT={cpu_overcommit} is out of range: use 0.1 to 100")
    if not 4 <= tb <= 4096:
        raise InvalidInput(f"CORRAL_TCG_TB_SIZE={tb} is out of range: use 4 to 4096 (MiB)")
    if not 0.1 <= interval <= 3600:
        raise InvalidInput(f"CORRAL_EXPIRY_INTERVAL={interval} is out of range: use 0.1 to 3600 (seconds)")
    if not 0 <= warning <= 30 * 86400:
        raise InvalidInput(f"CORRAL_EXPIRY_WARNING={warning} is out of range: use 0 to 2592000 (seconds)")
    if not 0.1 <= backup_check <= 3600:
        raise InvalidInput(f"CORRAL_BACKUP_CHECK_INTERVAL={backup_check} is out of range: use 0.1 to 3600 (seconds)")
    if not 0 <= fraction <= 1:
        raise InvalidInput(f"CORRAL_EXPIRY_WARNING_FRACTION={fraction} is out of range: use 0 to 1")
    if not 0.1 <= idle_interval <= 3600:
        raise InvalidInput(f"CORRAL_IDLE_INTERVAL={idle_interval} is out of range: use 0.1 to 3600 (seconds)")
    listen = v.get("CORRAL_LISTEN")
    if listen is not None:
        parse_listen(listen)
    if ("CORRAL_TLS_CERT" in v) != ("CORRAL_TLS_KEY" in v):
        raise InvalidInput("give both CORRAL_TLS_CERT and CORRAL_TLS_KEY, or neither (a self-signed one is made)")
    if not 0.1 <= metrics_interval <= 3600:
        raise InvalidInput(f"CORRAL_METRICS_INTERVAL={metrics_interval} is out of range: use 0.1 to 3600 (seconds)")
    return Settings(
        home=Path(v["CORRAL_HOME"]).expanduser().absolute(),
        cache=Path(v["CORRAL_CACHE"]).expanduser().absolute(),
        mirror=v["CORRAL_MIRROR"].rstrip("/"),
        accel=accel,
        memory_overcommit=overcommit,
        cpu_overcommit=cpu_overcommit,
        tcg_tb_size_mib=tb,
        qemu_binary=v["CORRAL_QEMU"],
        expiry_interval=interval,
        expiry_warning=warning,
        expiry_warning_fraction=fraction,
        backup_check_interval=backup_check,
        idle_interval=idle_interval,
        listen=listen,
        tls_cert=Path(v["CORRAL_TLS_CERT"]).expanduser().absolute() if "CORRAL_TLS_CERT" in v else None,
        tls_key=Path(v["CORRAL_TLS_KEY"]).expanduser().absolute() if "CORRAL_TLS_KEY" in v else None,
        metrics_interval=metrics_interval,
    )


def parse_listen(value: str) -> tuple[str, int]:
    """CORRAL_LISTEN's "ADDR:PORT" (IPv6 as "[::1]:8443") -> (address, port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"CORRAL_LISTEN={value!r} is not ADDR:PORT (e.g. 0.0.0.0:8443 or [::1]:8443)")
    return host, int(port)


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Load, default and validate the settings from ``env`` (default: the process environment)."""
    return _validate(_defaults(_load(dict(os.environ if env is None else env))))
