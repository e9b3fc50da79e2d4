"""The build's tools tree: a Debian trixie root (mmdebstrap) holding ukify, systemd-boot, sbsign
and virt-fw-vars, which the bookworm build host lacks or has too old, and the compiler and
headers for the root's python3.

Rules:
- Cached under a key over its package list, suite and mirror; a hit skips mmdebstrap.
- Tools run through `unshare --mount` + chroot with the work folder bound at /work, so no mount
  outlives the call (a crashed build leaves nothing mounted on the host).
- Nothing from the tools tree ends up in the appliance root except the signed systemd-boot and
  UKIs (whose stub comes from the tools tree's systemd-boot-efi) and the node's compiled codec
  (its gcc and python3-dev, the root's Debian suite); their versions are in the lock file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from image.errors import BuildError

TOOLS_PACKAGES: tuple[str, ...] = (
    "systemd-ukify",
    "systemd-boot-efi",
    "sbsigntool",
    "python3-pefile",
    "python3-virt-firmware",
    "ca-certificates",
    # the node's codec compiled by mypyc for the root's python3 (wheels.py)
    "gcc",
    "libc6-dev",
    "python3-dev",
)
WORK = "/work"


def tools_key(suite: str, mirror: str) -> str:
    material = {"packages": TOOLS_PACKAGES, "suite": suite, "mirror": mirror, "v": 1}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def tools_tree(cache: Path, suite: str, mirror: str, env: dict[str, str]) -> Path:
    """The cached tools tree (made on a miss; about 45 s)."""
    root = cache / "tools" / tools_key(suite, mirror)
    if (root / ".complete").exists():
        return root / "tree"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--quiet",
        f"--include={','.join(TOOLS_PACKAGES)}",
        '--aptopt=Acquire::Languages "none"',
        suite,
        str(root / "tree"),
        f"deb {mirror} {suite} main",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"mmdebstrap (tools tree) failed: {proc.stderr.strip()[-1200:]}")
    (root / "tree" / WORK.lstrip("/")).mkdir(exist_ok=True)
    (root / ".complete").touch()
    return root / "tree"


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """`cmd` on the build host; a non-zero exit is a BuildError carrying the output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(
            f"{Path(cmd[0]).name} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc  # type: ignore[no-any-return]


def run_in_tools(
    tree: Path, work: Path, cmd: list[str], epoch: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` chrooted in `tree` with `work` bound at /work (paths in cmd are /work/...)."""
    script = (
        'set -e; mount --bind "$1" "$2/work"; mount -t proc proc "$2/proc"; '
        'mount --rbind /dev "$2/dev"; t="$2"; shift 2; exec chroot "$t" "$@"'
    )
    proc = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
            *(str(work), str(tree), *cmd),
        ],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            **({"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {}),
        },
    )
    if proc.returncode != 0:
        raise BuildError(
            f"{cmd[0]} (tools tree) failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc


def tool_versions(tree: Path) -> dict[str, str]:
    """Package versions of the tools tree (recorded in the build's lock file)."""
    q = subprocess.run(
        ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("\t", 1) for line in q.stdout.splitlines() if line)
