"""Property tests of the path guard (`latis_core._os.pathguard.resolve_inside`).

Whatever path an agent sends, the answer is `PathRefused` or a path inside the
root, and the kernel agrees: the real file the path names (where it exists) is
the one `resolve_inside` returns. The tree holds the usual traps: symlinks to
`/`, to the parent, relative ones that climb out, loops, and names that look
like traversal (`..%2f`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latis_core._os.pathguard import MAX_NAME, PathRefused, resolve_inside

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel oracle reads /proc/self/fd"
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base, root): root is base/root, with traps inside it and a file outside."""
    base = tmp_path_factory.mktemp("guard")
    root = base / "root"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("inside")
    (root / "..%2f").mkdir()
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("outside")
    (root / "to_root").symlink_to("/")
    (root / "to_base").symlink_to(base)
    (root / "to_sub").symlink_to(root / "sub")
    (root / "sub" / "rel_up").symlink_to("../../outside")
    (root / "sub" / "rel_in").symlink_to("deep")
    (root / "loop_a").symlink_to("loop_b")
    (root / "loop_b").symlink_to("loop_a")
    (root / "dangling_out").symlink_to(base / "outside" / "nothing-yet")
    return base, root


#: Names that exist somewhere in the tree (drawn most often, so the kernel has
#: something to check), then names that do not and names that look like traps.
EXISTING = [
    "..",
    ".",
    "sub",
    "deep",
    "file.txt",
    "to_root",
    "to_base",
    "to_sub",
    "rel_up",
    "rel_in",
    "outside",
    "secret.txt",
    "root",
    "..%2f",
]
OTHERS = [
    "",
    "loop_a",
    "dangling_out",
    "etc",
    "passwd",
    "%2e%2e",
    "...",
    "~",
    " ",
    "x" * (MAX_NAME + 1),
]

components = st.one_of(
    st.sampled_from(EXISTING),
    st.sampled_from(EXISTING),
    st.sampled_from(EXISTING),
    st.sampled_from(OTHERS),
    st.text(max_size=6),
)


@st.composite
def paths(draw: st.DrawFn, root: Path, base: Path) -> str:
    prefix = draw(st.sampled_from(["", "/", f"{root}/", f"{base}/", "//", "./"]))
    return prefix + "/".join(draw(st.lists(components, max_size=6)))


def kernel_view(path: str) -> str | None:
    """Where the kernel says `path` leads, if it can open it."""
    try:
        fd = os.open(path, os.O_PATH)
    except (OSError, ValueError):
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def check(root: Path, path: str) -> None:
    try:
        resolved = resolve_inside(root, path)
    except PathRefused as exc:
        assert str(exc).startswith("path ")
        return
    real_root = Path(os.path.realpath(root))
    assert resolved == real_root or resolved.is_relative_to(real_root), (path, resolved)
    assert resolved.is_absolute()
    # The kernel agrees about what the accepted path names.
    joined = path if path.startswith("/") else os.path.join(root, path)
    seen = kernel_view(joined)
    if seen is not None:
        assert seen == str(resolved), (path, seen, resolved)


@given(st.data())
def test_accepted_paths_stay_inside(tree: tuple[Path, Path], data: st.DataObject) -> None:
    """Paths built from the traps: refused, or inside the root by the kernel's account."""
    base, root = tree
    check(root, data.draw(paths(root, base)))


@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=60))
def test_any_text_is_refused_or_inside(tree: tuple[Path, Path], text: str) -> None:
    """Any text at all (lone surrogates too): PathRefused or inside, never another error."""
    _, root = tree
    check(root, text)


@given(
    st.text(max_size=10),
    st.sampled_from(["\0", "\\", "\\\\server\\share\\"]),
    st.text(max_size=10),
)
def test_nul_and_windows_separators_are_always_refused(
    tree: tuple[Path, Path], before: str, bad: str, after: str
) -> None:
    _, root = tree
    with pytest.raises(PathRefused):
        resolve_inside(root, before + bad + after)


@given(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcz"), st.text(max_size=10))
def test_drive_names_are_always_refused(tree: tuple[Path, Path], letter: str, rest: str) -> None:
    _, root = tree
    with pytest.raises(PathRefused):
        resolve_inside(root, f"{letter}:{rest}")


def test_every_short_path_of_existing_names(tree: tuple[Path, Path]) -> None:
    """Exhaustively: every path of up to three names that exist somewhere in the tree,
    relative and absolute; the kernel's account is checked wherever it can open one."""
    import itertools

    _, root = tree
    opened = 0
    for n in range(1, 4):
        for names in itertools.product(EXISTING, repeat=n):
            for path in ("/".join(names), f"{root}/" + "/".join(names)):
                check(root, path)
                joined = path if path.startswith("/") else os.path.join(root, path)
                opened += kernel_view(joined) is not None
    assert opened > 200  # the oracle really ran
