"""The documentation runs: every Python example in it, and the Sphinx build.

Each ```python block of ``docs/**/*.md`` and ``README.md`` is executed. The
blocks of one page share a namespace and run in page order, so a page can
build an example up step by step. A block opts out with an HTML comment on the
line before it, which must give a reason::

    <!-- skip: needs a GPU -->

Code for other libraries (MXNet, Keras) is written as a ```{code-block} python
directive: Sphinx highlights it, and it is not run here.

Examples run in a fresh temporary directory (they may write files) and in a
module registered under a real name, so classes they define pickle by
reference into forked workers. Warnings are errors, as in the rest of the
suite, except the pin-memory warning that only machines without an
accelerator give (the same example runs on both).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sys
import types
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_DIR = "_build"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_SKIP = re.compile(r"^<!--\s*skip:(?P<reason>.*?)-->$")
# The warning pin_memory=True gives where there is nothing to pin for; a GPU machine gives none.
_MACHINE_DEPENDENT_WARNING = r"pin_memory=True but no accelerator is found"
_FRAMEWORKS = r"(keras|lightning|accelerate|torch)(\.|$)"


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its code, and why it is skipped (if it is)."""

    line: int  # 1-based line of the block's first line of code
    code: str
    skip: str | None


def pages() -> list[pathlib.Path]:
    """Every Markdown page of the docs, and the README."""
    found = [p for p in DOCS.rglob("*.md") if BUILD_DIR not in p.relative_to(DOCS).parts]
    return [*sorted(found), ROOT / "README.md"]


def _skip_reason(previous: str, where: str) -> str | None:
    match = _SKIP.match(previous.strip())
    if match is None:
        return None
    reason = match["reason"].strip()
    if not reason:
        raise ValueError(f"{where}: a skip comment must say why, as in <!-- skip: needs a GPU -->")
    return reason


def python_blocks(text: str, name: str = "<page>") -> list[Block]:
    """The ```python blocks of a Markdown text, in order; other fences are passed over."""
    blocks: list[Block] = []
    lines = text.splitlines()
    previous = ""  # the last non-blank line outside a code block
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        words = opening["info"].split()
        start = i + 1
        i = start
        while i < len(lines) and not _is_closing(lines[i], fence):
            i += 1
        if i == len(lines):
            raise ValueError(f"{name}:{start}: a code block opened here is never closed")
        if words and words[0] == "python":
            code = "\n".join(line[indent:] for line in lines[start:i])
            blocks.append(Block(start + 1, code, _skip_reason(previous, f"{name}:{start}")))
        previous = lines[i]
        i += 1
    return blocks


def _is_closing(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _page_id(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _run_page(page: pathlib.Path, blocks: list[Block]) -> None:
    name = _page_id(page)
    module = types.ModuleType("docs_example_" + re.sub(r"\W", "_", name.removesuffix(".md")))
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            if block.skip is None:
                # Leading newlines make tracebacks point at the page's own line numbers.
                code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
                exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_examples_run(page, tmp_path, monkeypatch):
    """Every unskipped Python example on the page runs without error or warning."""
    blocks = python_blocks(page.read_text(), _page_id(page))
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _MACHINE_DEPENDENT_WARNING, UserWarning)
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            # What the frameworks say about their own internals, whichever loader they get.
            warnings.filterwarnings("ignore", category=category, module=_FRAMEWORKS)
        _run_page(page, blocks)


def test_pages_with_examples_mostly_run_them():
    """Skipped examples stay rare: at most one in five, over all pages."""
    blocks = [b for page in pages() for b in python_blocks(page.read_text(), _page_id(page))]
    skipped = [b for b in blocks if b.skip is not None]
    assert len(blocks) >= 20
    assert len(skipped) * 5 <= len(blocks), [b.skip for b in skipped]


def test_block_extraction():
    """Python fences are found with their line numbers, skip reasons and indentation removed."""
    text = "\n".join(
        [
            "# Title",  # 1
            "```python",  # 2
            "x = 1",  # 3
            "```",  # 4
            "<!-- skip: needs a GPU -->",  # 5
            "",  # 6
            "```python",  # 7
            "y = x.cuda()",  # 8
            "```",  # 9
            "* item",  # 10
            "  ```python",  # 11
            "  z = 2",  # 12
            "  ```",  # 13
            "````markdown",  # 14
            "```python",  # 15
            "not = run",  # 16
            "```",  # 17
            "````",  # 18
            "```bash",  # 19
            "echo no",  # 20
            "```",  # 21
        ]
    )
    assert python_blocks(text) == [
        Block(3, "x = 1", None),
        Block(8, "y = x.cuda()", "needs a GPU"),
        Block(12, "z = 2", None),
    ]


def test_skip_without_reason_is_refused():
    """A skip comment with no reason is an error, so every opt-out is explained."""
    with pytest.raises(ValueError, match="must say why"):
        python_blocks("<!-- skip: -->\n```python\npass\n```\n", "page.md")


def test_sphinx_build_has_no_warnings(tmp_path):
    """The site builds with warnings as errors, as README's docs command builds it."""
    build = pytest.importorskip(
        "sphinx.cmd.build",
        reason='sphinx is not installed; pip install -c constraints.txt -e ".[docs]"',
    )
    pytest.importorskip("furo", reason="the furo theme is not installed")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed")
    args = ["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees")]
    with warnings.catch_warnings():
        # Sphinx's and its extensions' own deprecations are not problems in our docs;
        # problems in our docs are Sphinx warnings, which -W turns into a failed build.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        status = build.build_main([*args, str(DOCS), str(tmp_path / "html")])
    assert status == 0, "sphinx-build -W failed; its warnings are printed above"
