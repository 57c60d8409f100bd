#!/usr/bin/env bash
# Install whatever Corral needs that is missing: OS packages (QEMU, qemu-img, gpgv, the Debian archive keyring,
# mmdebstrap, e2fsprogs, OVMF, and the project virtualenv), each for:
#   extlinux, systemd-boot, dosfstools, mtools: the disk-boot tests
#   gcc-12, make, binutils, libelf1: build the 9p kernel modules for the images' cloud kernel (corral/images/kmods.py)
#   debugfs (e2fsprogs): the sandbox's file diff (corral/sandbox/)
#   skopeo, umoci: copy and unpack OCI images (corral/images/oci/)
#   qemu-system-arm, qemu-system-misc: aarch64 and riscv64 guests (docs/explanation/architectures.md)
#   (virtualenv) argon2-cffi, cryptography: users' passwords and the TLS certificate of corrald --listen (corral/auth/)
#   chromium: the web page's browser tests (tests/integration/test_web.py, Playwright on Debian's chromium)
# A second run changes nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian/Ubuntu package that provides it
declare -A NEED=(
  [qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils [gpgv]=gpgv [mmdebstrap]=mmdebstrap
  [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs [dpkg-deb]=dpkg [cpio]=cpio [xz]=xz-utils [zstd]=zstd
  [ssh]=openssh-client [ssh-keygen]=openssh-client [extlinux]=extlinux
  [mkfs.vfat]=dosfstools [mcopy]=mtools [sfdisk]=fdisk
  [gcc-12]=gcc-12 [make]=make [strip]=binutils
  [skopeo]=skopeo [umoci]=umoci
  [qemu-system-aarch64]=qemu-system-arm [qemu-system-riscv64]=qemu-system-misc
  [chromium]=chromium
  [etcd]=etcd-server
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
# objtool (from the linux-kbuild package the image builder unpacks) links libelf when it checks the 9p modules
ls /usr/lib/x86_64-linux-gnu/libelf.so.1 /lib/x86_64-linux-gnu/libelf.so.1 >/dev/null 2>&1 || missing+=(libelf1)
# UEFI: OVMF for imported --uefi images; systemd-boot's EFI binary for the test that makes a UEFI-bootable disk
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || missing+=(ovmf)
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || missing+=(systemd-boot-efi)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing system packages: ${pkgs}" >&2
    echo "run:   sudo apt-get update && sudo apt-get install -y --no-install-recommends ${pkgs}" >&2
    exit 1
  fi
  echo "installing system packages: ${pkgs}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends ${pkgs} >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Corral needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.corral-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing Corral into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v 'is ignored' || true
  .venv/bin/python -c 'import corral.cli.main' && touch "$stamp"
fi
# Byte-compile Corral itself: an editable install leaves it uncompiled, and where PYTHONDONTWRITEBYTECODE is set (as
# on the CI machines) every `corral` command and every corrald start would compile its ~200 modules again (about
# 0.1 s of CPU a command; the tests run some 700 commands). Python reads these files but never trusts a stale one
# (it checks the source's mtime), so an edit after this needs nothing; an up-to-date tree takes well under a second.
.venv/bin/python -m compileall -q corral
