"""A podman image that runs this checkout's `latis-unit`, for tests (built once).

No image registry is reachable, so the tests build their image: a busybox
rootfs (`busybox-static`, if installed; an empty rootfs works as well),
`podman import`ed once as `localhost/latis-test-base:1` (kept between runs:
the import is skipped when the image exists). The unit inside is the host's
own Python and this checkout, bind-mounted read-only at the same paths (see
`python_mounts`).

podman here needs runc, cgroupfs and no default ulimits (../shared/RECIPES.md):
CONTAINERS_CONF is pointed at .ci/containers.conf unless it is set already.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import latis_provisioners
import latis_transports

import latis_core

REPO = Path(__file__).resolve().parent.parent
CI_CONTAINERS_CONF = REPO / ".ci" / "containers.conf"
IMAGE = "localhost/latis-test-base:1"
#: The unit's command in the container: the host's Python, mounted.
UNIT_COMMAND = [sys.executable, "-m", "latis_core._unit.cli"]

def python_mounts() -> list[str]:
    """Read-only bind mounts that let this Python, with latis, run in a container.

    Each folder is mounted at its own path, and folders inside another are left out.
    """
    wanted = [Path("/usr"), Path("/lib"), Path("/lib64")]
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    wanted += [Path(prefix) for prefix in prefixes]
    wanted += [Path(folder) for folder in site.getsitepackages()]
    for package in (latis_core, latis_transports, latis_provisioners):
        assert package.__file__ is not None
        wanted.append(Path(package.__file__).resolve().parent.parent)
    kept: list[Path] = []
    for path in sorted({path for path in wanted if path.exists()}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return [f"{path}:{path}:ro" for path in kept]


def containers_env() -> dict[str, str]:
    """The environment with CONTAINERS_CONF pointed at .ci/containers.conf, unless set."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and CI_CONTAINERS_CONF.exists():
        env["CONTAINERS_CONF"] = str(CI_CONTAINERS_CONF)
    return env


def podman_run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=120,
        env=containers_env(),
    )


def ensure_image() -> None:
    """Import a minimal rootfs as IMAGE unless it exists: busybox (`busybox-static`) if
    installed (an empty rootfs runs the mounted Python as well, but has no `cat`)."""
    if podman_run("image", "exists", IMAGE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="latis-image-") as workdir:
        root = Path(workdir) / "rootfs"
        for folder in ("bin", "etc", "root", "run", "tmp"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        busybox = shutil.which("busybox")
        if busybox:
            shutil.copy(busybox, root / "bin" / "busybox")
            (root / "bin" / "sh").symlink_to("busybox")
        archive = Path(workdir) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        podman_run("import", "--quiet", str(archive), IMAGE)
