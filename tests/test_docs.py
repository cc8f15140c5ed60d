"""Every fenced code block in README.md and docs/*.md is checked, so the docs stay true to the code.

What happens to a block depends on its language (the word after the opening fence):

- ``python``: compiled, then run as a module of its own (a fresh namespace whose ``__name__`` is
  not ``"__main__"``, so an ``if __name__ == "__main__":`` part does not run and no server
  starts). Afterwards ``channels``, if the block defines it, must be a ``ChannelApp``, and
  ``app`` or ``application`` an ASGI application of a known kind.
- ``sh``, ``bash``, ``shell``, ``console``: every ``channel-asgi …`` (or ``python -m
  channel_asgi …``) command is parsed by the CLI's own parser and passed to ``cli.main`` with
  uvicorn's ``run`` replaced by a stub that builds the app instead of serving it, so the CLI's
  own checks apply (``--workers`` needs ``--redis``, …). Every ``uvicorn …`` command is parsed by
  uvicorn's command line, and an ``examples.…`` target must exist. Other commands are not run.
- ``json``: parsed. ``toml``: parsed (Python 3.11 and later).
- ``js``, ``javascript``: ``node --check`` (as an ES module); skipped when node is not installed.
- ``http``, ``text`` and anything else: example output, skipped unless marked ``check``. Every
  block names its language.

Markers are HTML comments on the line right before the opening fence; they are invisible on a
rendered page:

- ``<!-- fragment -->``: the block is deliberately incomplete (it uses names defined elsewhere):
  Python is compiled (top-level ``await`` allowed) but not run; other languages are skipped.
  Use it sparingly, and let the prose say what the block leaves out.
- ``<!-- excerpt: examples/fastapi_app/main.py -->``: the block is copied from that file, which
  the tests in ``tests/hosts`` run. Each part between ``# ...`` lines must appear in the file
  verbatim and in order. Python is compiled, not run.
- ``<!-- output: channel-asgi serve --help -->``: the block is what that command prints (at 100
  columns; compared with whitespace normalised).
- ``<!-- check -->`` on ``http`` and ``text`` blocks: an HTTP reply's JSON body has ``"code"``
  equal to its status and as many bytes as its ``content-length``; a request's JSON body parses;
  in a Server-Sent Events transcript every ``data:`` line is an envelope and every ``id:`` line
  matches the ``"id"`` of its event.

Relative links of the pages (and their ``#anchors``) must resolve, too; a link to a page that
docs/index.md lists but that is not written yet is skipped, not failed.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# Imported before a documented ``serve --workers N --metrics`` sets PROMETHEUS_MULTIPROC_DIR: the
# test process stays in prometheus_client's single-process mode, with no files of its own.
import prometheus_client  # noqa: F401
import pytest

from channel_asgi import ChannelApp, ChannelMiddleware, cli

ROOT: Final = Path(__file__).resolve().parents[1]
PAGES: Final = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE: Final = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MARKER: Final = re.compile(r"^\s*<!--\s*(?P<text>.*?)\s*-->\s*$")
_ELISION: Final = re.compile(r"^\s*(#\s*)?\.\.\.\s*$")
_LINK: Final = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_ENVELOPE_FIELDS: Final = {
    "stream_id",
    "author_id",
    "to_user_id",
    "message",
    "timestamp",
    "type",
    "widget_key",
}
_SHELLS: Final = {"sh", "bash", "shell", "console", "shell-session"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    marker: str | None
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}:{self.language or 'plain'}"


def blocks_of(page: Path) -> Iterator[Block]:
    """Yield the fenced code blocks of a Markdown page, with the marker before each."""
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        before = _MARKER.match(lines[index - 1]) if index else None
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            line = lines[end]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            end += 1
        info = opening["info"].split()
        yield Block(
            page,
            index + 1,
            info[0].lower() if info else "",
            before["text"] if before else None,
            "\n".join(body) + "\n",
        )
        index = end + 1


BLOCKS: Final = [block for page in PAGES for block in blocks_of(page)]


def test_the_pages_have_code_blocks() -> None:
    """The collection finds the blocks (a broken parser would silently test nothing)."""
    assert len(BLOCKS) > 50
    assert {block.language for block in BLOCKS} >= {"python", "js", "sh", "json", "http"}


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_code_block(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block compiles, runs, parses or matches what it documents, by its language."""
    marker = block.marker or ""
    known = marker in ("", "fragment", "check") or marker.startswith(("excerpt:", "output:"))
    assert known, f"unknown marker <!-- {marker} --> (see this test's docstring)"
    assert block.language, "name the block's language after the opening fence (```python, …)"
    if marker.startswith("excerpt:"):
        check_excerpt(block, marker.removeprefix("excerpt:").strip())
    if marker.startswith("output:"):
        check_output(block, marker.removeprefix("output:").strip(), monkeypatch)
        return
    language = block.language
    if language in ("python", "py"):
        check_python(block)
    elif marker == "fragment" or marker.startswith("excerpt:"):
        return
    elif language in _SHELLS:
        check_shell(block, monkeypatch)
    elif language == "json":
        json.loads(block.code)
    elif language in ("js", "javascript"):
        check_javascript(block)
    elif language == "toml":
        tomllib = pytest.importorskip("tomllib")
        tomllib.loads(block.code)
    elif marker == "check" and language == "http":
        check_http(block.code)
    elif marker == "check" and language in ("text", "txt"):
        check_event_stream(block.code)
    else:
        assert marker != "check", f"<!-- check --> is not defined for {language!r} blocks"


# -- python ------------------------------------------------------------------------------------


def asgi_app_types() -> tuple[type, ...]:
    """The ASGI application classes a documented ``app`` may be."""
    kinds: list[type] = [ChannelApp, ChannelMiddleware]
    with contextlib.suppress(ImportError):
        from starlette.applications import Starlette

        kinds.append(Starlette)  # FastAPI too
    with contextlib.suppress(ImportError):
        from quart import Quart

        kinds.append(Quart)
    with contextlib.suppress(ImportError):
        from django.core.handlers.asgi import ASGIHandler  # type: ignore[import-untyped]

        kinds.append(ASGIHandler)
    return tuple(kinds)


def check_python(block: Block) -> None:
    """Compile the block; run it unless it is a fragment or an excerpt."""
    runs = block.marker is None or block.marker == "check"
    flags = 0 if runs else ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(block.code, block.name, "exec", flags=flags)
    if not runs:
        return
    name = f"docs_block_{abs(hash(block.name))}"
    module = types.ModuleType(name)
    module.__file__ = str(block.page)
    sys.modules[name] = module  # what dataclasses and pydantic look annotations up in
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, module.__dict__)
    finally:
        del sys.modules[name]
    namespace = module.__dict__
    if "channels" in namespace:
        assert isinstance(namespace["channels"], ChannelApp), namespace["channels"]
    for app_name in ("app", "application"):
        if app_name in namespace:
            assert isinstance(namespace[app_name], asgi_app_types()), namespace[app_name]


def check_excerpt(block: Block, source: str) -> None:
    """Each part of the block between ``# ...`` lines is in ``source``, verbatim and in order."""
    path = ROOT / source
    assert path.is_file(), f"{source} does not exist"
    lines = [line.rstrip() for line in path.read_text().splitlines()]
    parts: list[list[str]] = [[]]
    for line in block.code.splitlines():
        if _ELISION.match(line):
            parts.append([])
        else:
            parts[-1].append(line.rstrip())
    start = 0
    for part in parts:
        while part and not part[0]:
            part.pop(0)
        while part and not part[-1]:
            part.pop()
        if not part:
            continue
        found = next(
            (
                at
                for at in range(start, len(lines) - len(part) + 1)
                if lines[at : at + len(part)] == part
            ),
            None,
        )
        assert found is not None, f"not in {source} (after line {start}):\n" + "\n".join(part)
        start = found + len(part)


# -- shell -------------------------------------------------------------------------------------


def commands(code: str) -> Iterator[list[str]]:
    """Yield the commands of a shell block as argument lists (without VAR=value prefixes)."""
    for raw in code.replace("\\\n", " ").splitlines():
        line = raw.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        command: list[str] = []
        for word in [*shlex.split(line, comments=True), ";"]:
            if word in ("&&", "||", ";", "|"):
                while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                    command.pop(0)
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def program_arguments(command: list[str], program: str, module: str) -> list[str] | None:
    """Return the arguments of ``program`` (or ``python -m module``), or None for another one."""
    if Path(command[0]).name == program:
        return command[1:]
    if Path(command[0]).name.startswith("python") and command[1:3] == ["-m", module]:
        return command[3:]
    return None


def channel_asgi_arguments(command: list[str]) -> list[str] | None:
    """Return the arguments of a ``channel-asgi`` command, or None for another command."""
    return program_arguments(command, "channel-asgi", "channel_asgi")


def uvicorn_arguments(command: list[str]) -> list[str] | None:
    """Return the arguments of a ``uvicorn`` command, or None for another command."""
    return program_arguments(command, "uvicorn", "uvicorn")


def check_shell(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check every ``channel-asgi`` and ``uvicorn`` command of the block."""
    for command in commands(block.code):
        arguments = channel_asgi_arguments(command)
        if arguments is not None:
            check_cli(arguments, monkeypatch)
        arguments = uvicorn_arguments(command)
        if arguments is not None:
            check_uvicorn(arguments)


def check_cli(arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse a ``channel-asgi`` command and let ``cli.main`` build (not serve) its app."""
    if "-h" in arguments or "--help" in arguments:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_:
            cli._parser().parse_args(arguments)
        assert exit_.value.code == 0
        return
    with contextlib.redirect_stderr(io.StringIO()) as errors:
        try:
            cli._parser().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"channel-asgi {shlex.join(arguments)}: {errors.getvalue()}")
    uvicorn = pytest.importorskip("uvicorn")
    served: list[Any] = []

    def build_instead_of_serving(target: str, **options: Any) -> None:
        assert target == "channel_asgi.cli:create_app"
        assert options["factory"] is True
        served.append(cli.create_app())

    monkeypatch.setattr(uvicorn, "run", build_instead_of_serving)
    monkeypatch.delenv("CHANNEL_ASGI_CLI_OPTIONS", raising=False)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        status = cli.main(arguments)
    assert status == 0, stderr.getvalue()
    assert len(served) == 1
    app = served[0]
    assert isinstance(app, ChannelApp) or isinstance(app.channels, ChannelApp)


def check_uvicorn(arguments: list[str]) -> None:
    """Parse a ``uvicorn`` command with uvicorn's own command line; examples must exist."""
    uvicorn_main = pytest.importorskip("uvicorn.main")
    context = uvicorn_main.main.make_context("uvicorn", list(arguments))
    target: str = context.params["app"]
    if target.startswith("examples."):
        module, _, attribute = target.partition(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{target}: no {path.relative_to(ROOT)}"
        defined = re.compile(rf"^{re.escape(attribute)}\s*(:[^=]*)?=", re.MULTILINE)
        assert defined.search(path.read_text()), f"{target}: {attribute} is not defined"


def check_output(block: Block, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block is what ``command`` (a ``channel-asgi`` command) prints."""
    arguments = channel_asgi_arguments(shlex.split(command))
    assert arguments is not None, f"only channel-asgi output can be checked, not {command!r}"
    monkeypatch.setenv("COLUMNS", "100")
    with contextlib.redirect_stdout(io.StringIO()) as printed, pytest.raises(SystemExit):
        cli._parser().parse_args(arguments)
    assert block.code.split() == printed.getvalue().split()


# -- javascript --------------------------------------------------------------------------------


def check_javascript(block: Block) -> None:
    """``node --check`` the block as an ES module (so top-level ``await`` parses)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    status, errors = javascript_results()[block.name]
    assert status == 0, errors


@functools.cache
def javascript_results() -> dict[str, tuple[int, str]]:
    """Run ``node --check`` on all JavaScript blocks at once: block name -> (status, errors)."""
    node = shutil.which("node") or "node"
    scripts = [block for block in BLOCKS if block.language in ("js", "javascript")]
    with tempfile.TemporaryDirectory() as directory:
        running = []
        for number, block in enumerate(scripts):
            path = Path(directory) / f"block{number}.mjs"
            path.write_text(block.code)
            command = [node, "--check", str(path)]
            running.append((block, subprocess.Popen(command, stderr=subprocess.PIPE, text=True)))
        results = {}
        for block, process in running:
            _, errors = process.communicate(timeout=30)
            results[block.name] = (process.returncode, errors)
    return results


# -- example output ----------------------------------------------------------------------------


def check_http(code: str) -> None:
    """An HTTP request or reply as documented: consistent status, length and JSON body."""
    head, _, body = code.partition("\n\n")
    first, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, separator, value = line.partition(":")
        assert separator, f"not a header line: {line!r}"
        headers[name.strip().lower()] = value.strip()
    body = body.strip()
    if first.startswith("HTTP/"):
        status = int(first.split()[1])
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(body.encode())
        if headers.get("content-type") == "application/json":
            reply = json.loads(body)
            assert reply["code"] == status, reply
        return
    method, target, version = first.split()
    assert method.isupper() and target.startswith("/") and version.startswith("HTTP/")
    if body:
        json.loads(body)


def check_event_stream(code: str) -> None:
    """A Server-Sent Events transcript: envelopes on ``data:``, ids that match."""
    events = [event for event in code.split("\n\n") if event.strip()]
    assert events
    for event in events:
        fields: dict[str, str] = {}
        for line in event.strip("\n").splitlines():
            if line.startswith(":"):
                continue
            name, separator, value = line.partition(": ")
            assert separator and name in ("id", "data", "retry", "event"), line
            fields[name] = value
        if "retry" in fields:
            assert int(fields["retry"]) > 0
        if "data" not in fields:
            continue
        envelope = json.loads(fields["data"])
        assert _ENVELOPE_FIELDS <= envelope.keys() <= _ENVELOPE_FIELDS | {"id"}, envelope
        assert envelope.get("id") == fields.get("id"), event
        assert (envelope["type"] == "broadcast") == ("id" in fields), event


# -- links -------------------------------------------------------------------------------------


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``."""
    found: set[str] = set()
    in_block = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            in_block = not in_block
        elif not in_block and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def planned_pages() -> set[Path]:
    """The pages docs/index.md links to: the map of the docs, written or about to be."""
    index = ROOT / "docs" / "index.md"
    return {
        (index.parent / match["target"].partition("#")[0]).resolve()
        for match in _LINK.finditer(index.read_text())
    }


LINKS: Final = [
    (page, match["target"])
    for page in PAGES
    for match in _LINK.finditer(re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL))
    if not re.match(r"[a-z]+:", match["target"])
]


@pytest.mark.parametrize(
    ("page", "target"), LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS]
)
def test_relative_link_resolves(page: Path, target: str) -> None:
    """A link to another file of the repository, or to a heading, points at something."""
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists() and resolved in planned_pages():
        pytest.skip(f"{target}: listed in docs/index.md, not written yet")
    assert resolved.exists(), f"{target}: no {os.path.relpath(resolved, ROOT)}"
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors(resolved), f"{target}: no heading with that anchor"
