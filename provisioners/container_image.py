"""The recipe for a `latis-unit` image: this latis, installed on a base image the user names.

`build_image(base)` (what `latis image build --base IMAGE` runs) makes a build
folder with latis and its dependencies as wheels (`pip wheel`, from the index
this Python installs from: no network inside the build) and the Containerfile
below, then runs `ENGINE build --network none`. The base needs a Python of the
same minor version as this one (the wheels are built for it) with pip:
`python:3.X-slim`, or any image whose `python3` is that.

latis is installed with `pip install --target /opt/latis`, so the base's own
Python stays as it was (and a distribution's "externally managed" Python
accepts it); `PYTHONPATH` and `PATH` point the image at it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from latis_core._plugins.provision import ProvisionError

from .container_engine import _fix_for, _stderr_summary

__all__ = ["CONTAINERFILE", "DEFAULT_TAG", "build_image"]

#: The image the README's container example names.
DEFAULT_TAG = "localhost/latis-unit:1"

#: The recipe. BASE and PYTHON are build arguments; `wheels/` is made beside it.
CONTAINERFILE = """\
ARG BASE
FROM ${BASE}
ARG PYTHON=python3
COPY wheels /tmp/latis-wheels
RUN ${PYTHON} -m pip install --no-cache-dir --no-index --find-links /tmp/latis-wheels \\
        --target /opt/latis latis \\
    && ${PYTHON} -c "import shutil; shutil.rmtree('/tmp/latis-wheels')"
ENV PYTHONPATH=/opt/latis \
    PATH=/opt/latis/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["latis-unit", "--stdio"]
"""


def _latis_spec() -> str:
    """What `pip wheel` builds: this checkout when latis runs from one, else this version."""
    try:
        dist = distribution("latis")
    except PackageNotFoundError:
        return str(Path(__file__).resolve().parent.parent)
    found = dist.read_text("direct_url.json")
    if found:
        url = json.loads(found).get("url", "")
        if url.startswith("file://"):
            return str(url)[len("file://"):]
    return f"latis=={dist.version}"


def _engine(wanted: str | None) -> str:
    for name in ([wanted] if wanted else ["podman", "docker"]):
        path = shutil.which(name)
        if path:
            return path
    raise ProvisionError(
        f"the container engine {wanted!r} is not on PATH" if wanted
        else "no container engine: neither podman nor docker is on PATH (install one)"
    )


def _run(argv: Sequence[str], what: str, timeout: float) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"{what} took more than {timeout:g} s, and was stopped") from None
    if result.returncode != 0:
        summary = _stderr_summary(result.stderr or result.stdout, result.returncode)
        raise ProvisionError(f"{what} failed: {summary}{_fix_for(summary)}")


def build_image(
    base: str,
    tag: str = DEFAULT_TAG,
    *,
    engine: str | None = None,
    python: str = "python3",
    volumes: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _: None,
    timeout: float = 1800.0,
) -> str:
    """Build `tag`: `base` with this latis installed; return the tag.

    `volumes` (`HOST:CONTAINER[:ro]`) are mounted during the build only
    (podman): for a base whose Python lives on the host, as the tests' does.

    Raises:
        ProvisionError: no engine, the wheels could not be made, or the build failed
            (the engine's own words, and the fix when one is known).
    """
    path = _engine(engine)
    with tempfile.TemporaryDirectory(prefix="latis-image-") as folder:
        context = Path(folder)
        (context / "Containerfile").write_text(CONTAINERFILE)
        spec = _latis_spec()
        progress(f"making wheels of {spec} and its dependencies")
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
              "--wheel-dir", str(context / "wheels"), spec], "pip wheel", timeout)
        progress(f"building {tag} from {base}")
        argv = [path, "build", "--network", "none", "--tag", tag,
                "--build-arg", f"BASE={base}", "--build-arg", f"PYTHON={python}",
                "--file", str(context / "Containerfile")]
        for volume in volumes:
            argv += ["--volume", volume]
        _run([*argv, str(context)], f"{Path(path).name} build", timeout)
    return tag
