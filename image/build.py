"""`kmsnode-image build`: Debian root with mmdebstrap -> erofs -> dm-verity -> per-slot signed UKIs
(kernel + small initramfs + command line, ukify/sbsign in a trixie tools tree) -> signed
manifest -> GPT disk (systemd-repart; ESP with signed systemd-boot) and update bundle.

Rules and invariants:
- Inputs are the committed tree (`git archive HEAD`, never the dirty working tree), the pinned
  constraints, the recipe files, the signing key's public half and the `ImageConfig`. The
  mmdebstrap tarball is cached under a key over all of them; a cache hit skips mmdebstrap.
- Reproducible: SOURCE_DATE_EPOCH everywhere (mmdebstrap, pip, wheels, mkfs.erofs -T, cpio),
  fixed erofs UUID, verity salt/UUID and repart seed derived from the release.
- Python dependencies are cp313 wheels pinned by constraints.txt, downloaded with pip on the
  build host and installed with pip inside the root from a local directory (no network inside);
  the node's own wheel carries the mypyc-compiled codec, built in the tools tree (wheels.py).
- The kernel package is unpacked into the root (`dpkg-deb -x`, then depmod) rather than installed
  through dpkg, so no initramfs generator runs; it is recorded in the manifest's package list.
- The Debian archive state is recorded in packages.lock (see lock.py); `lock=` rebuilds the base
  from exactly those files.
- Every long step prints `[build] step ... (elapsed)`.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image import lock as lockfile
from image.config import DPKG_EXCLUDES, RECIPE_DIR, BuildPaths, ImageConfig, base_cache_key
from image.disk import MIB, DiskLayout
from image.errors import BuildError
from image.manifest import Signer, public_key_pem
from image.release import BUILDER, ReleaseInfo, ReleaseOutputs, assemble
from image.secureboot import SecureBootKey
from image.tools import run, tool_versions, tools_tree
from image.uki import signed_chain
from image.wheels import build_wheels


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        print(f"[build] {name} ...", file=sys.stderr, flush=True)
        yield
        now = time.monotonic()
        print(
            f"[build] {name} done in {now - start:.1f}s (total {now - self.t0:.1f}s)",
            file=sys.stderr,
            flush=True,
        )


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BuildError(
            f"missing build tools: {', '.join(missing)} "
            "(apt-get install mmdebstrap erofs-utils dosfstools cpio)"
        )


def git_commit(repo: Path, rev: str = "HEAD") -> str:
    return run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"]
    ).stdout.strip()


def commit_time(repo: Path, sha: str) -> int:
    """SOURCE_DATE_EPOCH of a build: the commit's committer time."""
    return int(run(["git", "-C", str(repo), "show", "-s", "--format=%ct", sha]).stdout.strip())


def sources(config: ImageConfig) -> list[str]:
    return [
        f"deb {mirror} {suite} main"
        for mirror, suite in (
            (config.mirror, config.suite),
            (config.mirror, f"{config.suite}-updates"),
            (config.security_mirror, f"{config.suite}-security"),
        )
    ]


def mmdebstrap_root(
    config: ImageConfig,
    out_tar: Path,
    kernel_out: Path,
    debs_out: Path,
    env: dict[str, str],
    locked_repo: Path | None = None,
) -> None:
    hook = RECIPE_DIR / "customize-hook.sh"
    env = {
        **env,
        "SOURCE_DATE_EPOCH": str(config.base_epoch),
        "KMSNODE_KERNEL_OUT": str(kernel_out),
        "KMSNODE_PRUNE": " ".join(config.module_prune),
        "KMSNODE_DEBS_OUT": str(debs_out),
        "KMSNODE_LOCKED_DEBS": str(locked_repo or ""),
    }
    if locked_repo is None:
        source_list = "\n".join(sources(config)) + "\n"
    else:
        # Only the locked files are visible to apt; copy:// puts them into the root's cache.
        source_list = f"deb [trusted=yes] copy://{locked_repo} ./\n"
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--quiet",
        "--skip=essential/unlink",
        f"--include={','.join(config.packages)}",
    ]
    cmd += [f"--dpkgopt={o}" for o in DPKG_EXCLUDES]
    cmd += [
        '--aptopt=Acquire::Languages "none"',
        f'--customize-hook=sh {hook} "$1"',
        config.suite,
        str(out_tar),
        "-",
    ]
    proc = subprocess.run(cmd, input=source_list, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"mmdebstrap failed: {proc.stderr.strip()[-1500:]}")


def install_node(
    rootdir: Path, wheels: Path, pubkey: Path, config: ImageConfig, env: dict[str, str]
) -> None:
    env = {
        **env,
        "KMSNODE_WHEELS": str(wheels),
        "KMSNODE_PUBKEY": str(pubkey),
        "KMSNODE_RECIPE": str(RECIPE_DIR),
        "KMSNODE_PRODUCT": config.product,
        "KMSNODE_VERSION": config.version,
        "KMSNODE_VARIANT": config.variant,
        "KMSNODE_INSECURE_NO_TPM": "1" if config.insecure_no_tpm else "",
        "KMSNODE_EXTRA_TREE": str(Path(config.extra_tree).resolve()) if config.extra_tree else "",
    }
    mounts = [(rootdir / "dev", ["--bind", "/dev"]), (rootdir / "proc", ["-t", "proc", "proc"])]
    done: list[Path] = []
    try:
        for where, how in mounts:
            where.mkdir(exist_ok=True)
            run(["mount", *how, str(where)])
            done.append(where)
        run(["sh", str(RECIPE_DIR / "install-node.sh"), str(rootdir)], env=env)
    finally:
        for where in reversed(done):
            subprocess.run(["umount", "-l", str(where)], check=False)


def clamp_mtimes(rootdir: Path, epoch: int) -> None:
    """Files written after mmdebstrap get the build time; clamp them like mmdebstrap does."""
    for dirpath, dirnames, filenames in os.walk(rootdir):
        for name in (*dirnames, *filenames):
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
    if os.lstat(rootdir).st_mtime > epoch:
        os.utime(rootdir, (epoch, epoch))


def extract(tar: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            str(tar),
            "-C",
            str(dest),
        ]
    )


def make_erofs(rootdir: Path, out: Path, config: ImageConfig) -> None:
    out.unlink(missing_ok=True)
    run(
        [
            "mkfs.erofs",
            "-zlz4hc",
            f"-T{config.source_date_epoch}",
            f"-U{config.erofs_uuid}",
            "-x-1",
            str(out),
            str(rootdir),
        ]
    )
    if out.stat().st_size % 4096:
        raise BuildError("erofs image size is not a multiple of 4096")


def package_list(rootdir: Path, kernel_out: Path) -> dict[str, str]:
    q = run(
        ["dpkg-query", f"--admindir={rootdir}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"]
    )
    pkgs = dict(line.split("\t", 1) for line in q.stdout.splitlines() if line)
    # "Package: linux-image-X<TAB>Version: Y" as written by the base hook
    fields = dict(
        f.split(": ", 1) for f in (kernel_out / "kernel-package").read_text().strip().split("\t")
    )
    pkgs[fields["Package"]] = fields["Version"]
    return dict(sorted(pkgs.items()))


def _module_deps(moddir: Path, names: tuple[str, ...]) -> list[str]:
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        base = Path(mod).name.split(".ko")[0].replace("-", "_")
        by_name[base] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)

    for n in names:
        if n.replace("-", "_") in by_name:
            visit(by_name[n.replace("-", "_")])
    return order


def make_initrd(rootdir: Path, kernel_out: Path, config: ImageConfig, out: Path) -> None:
    """A busybox initramfs with dmsetup (libraries from the root) and the storage modules."""
    kver = (kernel_out / "kver").read_text().strip()
    moddir = rootdir / "usr/lib/modules" / kver
    with tempfile.TemporaryDirectory(prefix="kmsnode-initrd-") as tmp:
        t = Path(tmp)
        for d in ("bin", "lib/modules", "proc", "sys", "dev", "newroot", "lib64", "etc"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel_out / "busybox/usr/bin/busybox", t / "bin/busybox")
        applets = [
            "sh",
            "mount",
            "umount",
            "insmod",
            "cat",
            "sed",
            "grep",
            "sleep",
            "mkdir",
            "switch_root",
            "poweroff",
            "ls",
            "echo",
            "dd",
            "tr",
            "printf",
        ]
        for a in applets:
            os.symlink("busybox", t / "bin" / a)
        # dmsetup and its shared libraries, resolved inside the root.
        shutil.copy2(rootdir / "usr/sbin/dmsetup", t / "bin/dmsetup")
        ldd = run(["chroot", str(rootdir), "ldd", "/usr/sbin/dmsetup"]).stdout
        for line in ldd.splitlines():
            parts = line.split()
            lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if lib.startswith("/"):
                real = rootdir / Path(lib).relative_to("/")
                dst = t / Path(lib).relative_to("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(real, dst)  # follows the root's relative symlinks
        order = []
        for mod in _module_deps(moddir, config.initrd_modules):
            src = moddir / mod
            name = Path(mod).name
            data = src.read_bytes()
            if name.endswith(".xz"):
                data, name = lzma.decompress(data), name[:-3]
            elif name.endswith(".zst"):
                raise BuildError("zstd-compressed modules are not supported")
            (t / "lib/modules" / name).write_bytes(data)
            order.append(name)
        (t / "modules.order").write_text("\n".join(order) + "\n")
        shutil.copy2(RECIPE_DIR / "initrd-init", t / "init")
        os.chmod(t / "init", 0o755)  # noqa: S103 - the initramfs /init must be executable
        files = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
        for p in [t, *t.rglob("*")]:
            os.utime(p, (config.source_date_epoch, config.source_date_epoch), follow_symlinks=False)
        cpio = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
            input=("\n".join(files) + "\n").encode(),
            capture_output=True,
            cwd=t,
        )
        if cpio.returncode != 0:
            raise BuildError(f"cpio failed: {cpio.stderr.decode()[-300:]}")
        out.write_bytes(gzip.compress(cpio.stdout, compresslevel=6, mtime=config.source_date_epoch))


def build(
    repo: Path,
    paths: BuildPaths,
    config: ImageConfig,
    signer: Signer,
    sb_key: SecureBootKey,
    progress: Progress | None = None,
    commit: str = "HEAD",
    lock: Path | None = None,
) -> ReleaseOutputs:
    """Build `commit` (default HEAD) of `repo`; the working tree's uncommitted files are ignored.

    `lock`: rebuild the Debian base from exactly the packages of an earlier build's lock file.
    """
    require_tools("mmdebstrap", "mkfs.erofs", "systemd-repart", "mkfs.vfat", "mcopy", "cpio", "git")
    sb_key.check()
    if os.geteuid() != 0:
        raise BuildError("the build runs mmdebstrap in root mode: run as root")
    progress = progress or Progress()
    sha = git_commit(repo, commit)
    env = {
        **os.environ,
        "SOURCE_DATE_EPOCH": str(config.source_date_epoch),
        "PYTHONHASHSEED": "0",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }
    for d in (paths.cache, paths.rootfs_cache, paths.wheel_cache, paths.work, paths.out):
        d.mkdir(parents=True, exist_ok=True)
    pub = paths.work / "release.pub"
    pub.write_bytes(public_key_pem(signer.public_key()))
    with progress.step("tools tree (ukify, systemd-boot, sbsign, gcc and python3-dev)"):
        tools = tools_tree(paths.cache, config.suite, config.mirror, env)
    with progress.step("wheels (node from git HEAD with the codec compiled, pinned cp313 deps)"):
        wheels = build_wheels(repo, sha, paths, config, tools, env)
    key = base_cache_key(config, BUILDER)
    locked: list[lockfile.LockedDeb] | None = None
    if lock is not None:
        locked = lockfile.read(lock)
        key = hashlib.sha256((key + lock.read_text()).encode()).hexdigest()[:32]
    cached = paths.rootfs_cache / key
    tar, kernel_out = cached / "rootfs.tar", cached / "kernel"
    deb_cache = paths.cache / "debs"
    if (cached / ".complete").exists():
        print(f"[build] rootfs cache hit {key}", file=sys.stderr)
    else:
        label = "from lock" if locked is not None else "cache miss"
        with progress.step(f"mmdebstrap {config.suite} ({label} {key})"):
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            repo_dir = None
            if locked is not None:
                repo_dir = lockfile.locked_repo(
                    locked, deb_cache, paths.work / "locked-repo", config.suite
                )
            mmdebstrap_root(config, tar, kernel_out, cached / "debs", env, repo_dir)
            debs = lockfile.collect(cached / "debs", deb_cache)
            lockfile.write(
                cached / "packages.lock",
                lockfile.lock_obj(debs, config.suite, sources(config), tool_versions(tools)),
            )
            (cached / ".complete").touch()
    rootdir = paths.work / "rootfs"
    with progress.step("extract base, install node (venv, units, udev rules, users)"):
        extract(tar, rootdir)
        # The archive the root names, whatever the base was made from (a lock rebuild uses a
        # local copy of the locked files).
        (rootdir / "etc/apt/sources.list").write_text("\n".join(sources(config)) + "\n")
        # apt's auto-installed marks depend on how the base was resolved, not on what it holds
        # (the dpkg database is the record); nothing uses apt on the read-only root.
        (rootdir / "var/lib/apt/extended_states").unlink(missing_ok=True)
        install_node(rootdir, wheels, pub, config, env)
        clamp_mtimes(rootdir, config.source_date_epoch)
    out = paths.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    root_img = out / "root.img"
    with progress.step("mkfs.erofs"):
        make_erofs(rootdir, root_img, config)
    with progress.step("kernel and initramfs"):
        shutil.copy2(kernel_out / "vmlinuz", out / "vmlinuz")
        os.utime(out / "vmlinuz", (config.source_date_epoch, config.source_date_epoch))
        make_initrd(rootdir, kernel_out, config, out / "initrd.img")
    packages = package_list(rootdir, kernel_out)
    shutil.copyfile(cached / "packages.lock", out / "packages.lock")
    with progress.step("systemd-boot and UKIs signed with the db key"):
        chain = signed_chain(
            tools,
            paths.work / "uki",
            out / "vmlinuz",
            out / "initrd.img",
            (kernel_out / "kver").read_text().strip(),
            config.product,
            sb_key,
            config.source_date_epoch,
        )
    info = ReleaseInfo(
        config.product,
        config.version,
        config.security_version,
        sha,
        config.source_date_epoch,
        config.suite,
    )
    with progress.step("verity, disk (systemd-repart), manifest, signature, bundle"):
        size = root_img.stat().st_size
        layout = DiskLayout.for_root(
            size,
            size // 100 + 65536,
            config.slot_headroom_percent,
            config.state_size_mib * MIB,
            config.esp_size_mib * MIB,
        )
        outputs = assemble(out, root_img, info, signer, packages, None, layout, chain)
        shutil.rmtree(paths.work / "uki", ignore_errors=True)
    return outputs
