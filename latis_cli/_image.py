"""`latis image build`: the recipe for a `latis-unit` container image."""

from __future__ import annotations

import sys
from typing import Annotated

from cyclopts import App, Parameter

from ._cmdr import ERROR, OK

image_app = App(
    name="image",
    help="Container images that hold latis-unit (for the container provisioner).",
    help_format="plaintext",
)


@image_app.command
def build(
    *,
    base: str | None = None,
    tag: str = "localhost/latis-unit:1",
    engine: str | None = None,
    python: str = "python3",
    volume: tuple[str, ...] = (),
    print_recipe: Annotated[bool, Parameter(name="--print")] = False,
) -> int:
    """Build an image with this latis installed on a base image you name.

    The base needs a Python of this one's minor version, with pip (for
    example `python:3.11-slim`). latis and its dependencies are made into
    wheels here, from the index this Python installs from, then installed in
    the image with no network (`--network none`). The result is what the
    README's container example runs:
    `latis unit add box --provisioner container --image localhost/latis-unit:1`.

    For example:
      latis image build --base python:3.11-slim
      latis image build --base python:3.11-slim --tag localhost/latis-unit:2 --engine docker
      latis image build --print > Containerfile

    Args:
        base: the base image (it must have python3 and pip).
        tag: the image to make.
        engine: podman or docker (default: whichever is on PATH, podman first).
        python: the base's Python command.
        volume: a HOST:CONTAINER[:ro] mount during the build only (podman; repeatable).
        print_recipe: print the Containerfile and stop.
    """
    from latis_core import ProvisionError, load_provisioner

    container = load_provisioner("container")
    if print_recipe:
        sys.stdout.write(container.CONTAINERFILE)
        return OK
    if not base:
        print("latis: --base IMAGE is required (an image with python3 and pip, "
              "e.g. python:3.11-slim)", file=sys.stderr)
        return 2
    try:
        built = container.build_image(
            base, tag, engine=engine, python=python, volumes=volume,
            progress=lambda text: print(text, file=sys.stderr),
        )
    except ProvisionError as exc:
        print(f"latis: image build: {exc}", file=sys.stderr)
        return ERROR
    print(f"built {built}: latis unit add NAME --provisioner container --image {built}",
          file=sys.stderr)
    return OK
