"""The fenced code blocks of the docs and the README, for tests and for mypy.

``python tests/docs_blocks.py OUT`` writes each page's Python blocks as one module
(``docs_<page>.py``), each complete test module of the docs under its caption, and the
README's example, into the directory OUT, so that ``nox -s typing`` checks them with
``mypy --strict`` as it checks the code.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"
README = Path(__file__).parent.parent / "README.md"

_FENCE = re.compile(r"^(`{3,})(.*)$")


def blocks(path: Path) -> Iterator[tuple[str, dict[str, str], str, int]]:
    """Yield (language, options, code, line) for each fenced block of a Markdown file."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, info = match.group(1), match.group(2).strip()
        start = i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        options: dict[str, str] = {}
        language = info
        if info.startswith("{code-block}"):
            language = info.removeprefix("{code-block}").strip()
            while body and body[0].startswith(":"):
                name, _, value = body.pop(0)[1:].partition(":")
                options[name.strip()] = value.strip()
        yield language, options, "\n".join(body) + "\n", start


def scripts(path: Path) -> list[tuple[str, int]]:
    return [
        (code, line) for lang, opts, code, line in blocks(path) if lang == "python" and not opts
    ]


def documented_test_modules(path: Path) -> list[tuple[str, str]]:
    return [
        (opts["caption"], code)
        for lang, opts, code, _ in blocks(path)
        if lang == "python" and opts.get("caption", "").startswith("test_")
    ]


def write_all(out: Path) -> list[Path]:
    """Write every page's script, test module and the README example into *out*."""
    written = []
    for page in sorted(DOCS.glob("*.md")):
        code = "".join(block for block, _ in scripts(page))
        if code:
            written.append(out / f"docs_{page.stem.replace('-', '_')}.py")
            written[-1].write_text(code)
        for name, module in documented_test_modules(page):
            written.append(out / name)
            written[-1].write_text(module)
    readme = "".join(code for code, _ in scripts(README))
    written.append(out / "readme_example.py")
    written[-1].write_text(readme)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for path in write_all(target):
        print(path)
