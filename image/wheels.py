"""The wheels an image installs: the node's own, with its MIKEY codec compiled by mypyc for the
root's Python, and its pinned dependencies.

Rules and invariants:
- The node's wheel is built from the committed tree (`git archive`, never the working tree) with
  `KMSNODE_MYPYC=1` inside the tools tree, whose gcc and python3-dev belong to the same Debian
  suite as the root: the extension is for the root's interpreter (cp313), not the build host's.
  `KMSNODE_MYPYC=1` makes a missing compiler fail the build; an image never ships the pure
  fallback by accident.
- Every Python input is a cp313 wheel pinned by constraints.txt, downloaded with pip on the build
  host (the node's dependencies and, for the compile, mypy and setuptools) and installed from a
  local folder: nothing reaches the network inside a chroot.
- Cached under keys over everything that changes the bytes: the dependency wheels by the
  constraints and ABI; the node's wheel by the git tree, SOURCE_DATE_EPOCH, the tools tree and
  the constraints. The compile is reproducible (setup.py maps the build folder out of the debug
  info; the tree sits at the same path in the tools tree every time), so a hit gives the bytes a
  miss would.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

from image.config import BuildPaths, ImageConfig
from image.errors import BuildError
from image.tools import WORK, run, run_in_tools, tools_key

PLATFORMS = (
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
)
# What the compile needs beyond the node's sources (setup.py, pyproject's build-system).
BUILD_REQUIREMENTS = ("mypy", "setuptools")


def export_tree(repo: Path, sha: str, dest: Path) -> None:
    """The committed tree of `sha` unpacked into `dest` (which must not exist)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", sha], capture_output=True, check=True
    )
    tar_path = dest.parent / f"{dest.name}.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as t:
        t.extractall(dest, filter="data")
    tar_path.unlink()


def download(
    repo: Path, config: ImageConfig, requirements: list[str], dest: Path, env: dict[str, str]
) -> Path:
    """Pinned cp313 wheels of `requirements` (and their dependencies) plus pip, cached in `dest`."""
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    pip = str(repo / ".venv/bin/pip")
    abi = config.python_abi
    cmd = [pip, "download", "-q", "--only-binary=:all:", "--python-version", f"{abi[2]}.{abi[3:]}"]
    cmd += ["--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    run([*cmd, "-c", str(repo / "constraints.txt"), "-d", str(dest), *requirements], env=env)
    pip_version = run([pip, "--version"]).stdout.split()[1]
    pip_only = ["--only-binary=:all:", "--no-deps", "-d", str(dest), f"pip=={pip_version}"]
    run([pip, "download", "-q", *pip_only], env=env)
    (dest / ".complete").touch()
    return dest


def runtime_requirements(tree: Path) -> list[str]:
    """The node's dependencies as its pyproject.toml states them (the constraints pin them)."""
    with open(tree / "pyproject.toml", "rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def compiled_node_wheel(
    tools: Path, tree: Path, wheel_dirs: list[Path], requirements: list[str], work: Path, epoch: int
) -> Path:
    """Build the node's wheel with the compiled codec inside the tools tree; its path in `work`.

    The build venv holds mypy, setuptools and the node's own dependencies (mypyc type-checks the
    compiled modules against them, cryptography's types among them), all from `wheel_dirs`.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(tree, work / "src")
    for folder in wheel_dirs:
        shutil.copytree(folder, work / "deps", dirs_exist_ok=True)
    pip_wheel = next((work / "deps").glob("pip-*.whl")).name
    pip = f"{WORK}/venv/bin/python {WORK}/deps/{pip_wheel}/pip"
    quiet = "-q --no-cache-dir --disable-pip-version-check"
    offline = f"--no-index --find-links {WORK}/deps"
    wanted = " ".join(shlex.quote(r) for r in (*BUILD_REQUIREMENTS, *requirements))
    script = (
        f"set -e; python3 -m venv --without-pip {WORK}/venv; "
        f"{pip} install {quiet} {offline} {wanted}; "
        f"cd {WORK}/src; KMSNODE_MYPYC=1 {pip} wheel {quiet} --no-deps --no-build-isolation "
        f"-w {WORK}/out ."
    )
    run_in_tools(tools, work, ["sh", "-c", script], epoch)
    built = list((work / "out").glob("kmsnode-*.whl"))
    if len(built) != 1:
        raise BuildError(f"the compiled node build gave {len(built)} wheels, not one")
    return built[0]


def node_wheel_key(repo: Path, sha: str, config: ImageConfig) -> str:
    tree_id = run(["git", "-C", str(repo), "rev-parse", f"{sha}^{{tree}}"]).stdout.strip()
    material = [tree_id, str(config.source_date_epoch), tools_key(config.suite, config.mirror)]
    material.append(hashlib.sha256((repo / "constraints.txt").read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(material).encode()).hexdigest()[:24]


def build_wheels(
    repo: Path,
    sha: str,
    paths: BuildPaths,
    config: ImageConfig,
    tools: Path,
    env: dict[str, str],
) -> Path:
    """The folder of wheels the root installs: the compiled node wheel and its pinned deps."""
    wheels = paths.work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    tree = paths.work / "src"
    shutil.rmtree(tree, ignore_errors=True)
    export_tree(repo, sha, tree)
    pins = hashlib.sha256((repo / "constraints.txt").read_bytes()).hexdigest()[:16]
    cache = paths.wheel_cache
    abi = config.python_abi
    deps = download(repo, config, runtime_requirements(tree), cache / f"{abi}-{pins}", env)
    node = cache / f"node-{node_wheel_key(repo, sha, config)}"
    if not (node / ".complete").exists():
        build_deps = download(
            repo, config, list(BUILD_REQUIREMENTS), cache / f"build-{abi}-{pins}", env
        )
        built = compiled_node_wheel(
            tools,
            tree,
            [deps, build_deps],
            runtime_requirements(tree),
            paths.work / "mypyc",
            config.source_date_epoch,
        )
        shutil.rmtree(node, ignore_errors=True)
        node.mkdir(parents=True)
        shutil.copy2(built, node / built.name)
        shutil.rmtree(paths.work / "mypyc", ignore_errors=True)
        (node / ".complete").touch()
    shutil.rmtree(tree)
    for w in (*deps.glob("*.whl"), *node.glob("kmsnode-*.whl")):
        shutil.copy2(w, wheels / w.name)
    return wheels
