"""Build configuration as frozen dataclasses (mkosi style): every input of a build is a field, and
the cache key is a hash over all of them plus the recipe files and the wheels.

Rules:
- Nothing in a build depends on the clock, the host name or randomness: SOURCE_DATE_EPOCH is a
  field (the CLI sets it to the commit time), salts and UUIDs derive from product/version. The
  cached Debian base is made with its own fixed `base_epoch` (older than any commit), so a new
  commit does not invalidate it; every file the build adds gets SOURCE_DATE_EPOCH.
- Paths for caches and outputs are outside the git tree (default /var/cache/kmsnode-image).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent / "recipe"

# Installed into the root with apt (mmdebstrap --variant=minbase plus these).
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dmsetup",
    "kmod",
    "e2fsprogs",
    "python3",
    "softhsm2",
    "opensc",
    "ca-certificates",
    # boot assessment (systemd-bless-boot), sealed state and credentials, time, firewall
    "systemd-boot",
    "systemd-cryptsetup",
    "cryptsetup-bin",
    "libtss2-esys-3.0.2-0t64",
    "libtss2-rc0t64",
    "libtss2-mu-4.0.1-0t64",
    "libtss2-tcti-device0t64",
    "systemd-timesyncd",
    "nftables",
    # logind (on the system bus) turns the power button into a clean shutdown
    "dbus",
)

# Kernel module directories dropped from the root (never needed on the appliance).
MODULE_PRUNE: tuple[str, ...] = (
    "kernel/drivers/gpu",
    "kernel/sound",
    "kernel/drivers/media",
    "kernel/drivers/infiniband",
    "kernel/drivers/net/wireless",
    "kernel/drivers/staging",
    "kernel/drivers/bluetooth",
    "kernel/net/bluetooth",
    "kernel/drivers/iio",
    "kernel/drivers/input/touchscreen",
    "kernel/arch/x86/kvm",
    "kernel/net/wireless",
    "kernel/net/mac80211",
)

# Modules the initramfs loads (with their dependencies) to reach the verity root.
INITRD_MODULES: tuple[str, ...] = (
    "crc32c_generic",  # libcrc32c (erofs, ext4) needs the crc32c algorithm at load time
    "virtio_pci",
    "virtio_blk",
    "dm_mod",
    "dm_verity",
    "erofs",
    "sd_mod",
    "ahci",
    "nvme",
    "efivarfs",  # the initramfs reports the firmware's Secure Boot state
)

DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


@dataclass(frozen=True)
class ImageConfig:
    product: str = "kmsnode"
    version: str = "0.1.0"
    security_version: int = 1
    suite: str = "trixie"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = PACKAGES
    module_prune: tuple[str, ...] = MODULE_PRUNE
    initrd_modules: tuple[str, ...] = INITRD_MODULES
    python_abi: str = "cp313"
    source_date_epoch: int = 1767225600
    base_epoch: int = 1767225600
    variant: str = "production"  # or "test": provisions itself from a throw-away CA
    insecure_no_tpm: bool = False
    extra_tree: str | None = None
    state_size_mib: int = 256
    esp_size_mib: int = 128
    slot_headroom_percent: int = 50
    erofs_uuid: str = "6b6d736e-6f64-6500-8000-000000000001"

    def key_material(self) -> dict[str, object]:
        """The fields that change the mmdebstrap root (the rest only change later steps)."""
        rootfs_fields = (
            "suite",
            "mirror",
            "security_mirror",
            "packages",
            "module_prune",
            "python_abi",
        )
        d = asdict(self)
        return {k: d[k] for k in (*rootfs_fields, "base_epoch")}


@dataclass(frozen=True)
class BuildPaths:
    repo: Path
    cache: Path = Path("/var/cache/kmsnode-image")
    out: Path = field(default=Path("/var/cache/kmsnode-image/out"))
    # Scratch space of one build (extracted root, wheels); default under the cache. Builds that
    # may run next to others (tests) give their own.
    scratch: Path | None = None

    @property
    def rootfs_cache(self) -> Path:
        return self.cache / "rootfs"

    @property
    def wheel_cache(self) -> Path:
        return self.cache / "wheels"

    @property
    def work(self) -> Path:
        return self.scratch or self.cache / "work"


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def base_cache_key(config: ImageConfig, builder: str) -> str:
    """Key of the cached mmdebstrap base: Debian inputs and the base hook only (not the node)."""
    material = {
        "config": config.key_material(),
        "hook": file_digest(RECIPE_DIR / "customize-hook.sh"),
        "builder": builder,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]
