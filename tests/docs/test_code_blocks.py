"""Executable documentation: every python and shell block of README.md and docs/**/*.md runs.

For each markdown file, all of its ``python`` blocks run in order in one fresh interpreter and
one shared namespace, and all of its shell blocks (``bash``, ``sh``, ``shell``, ``console``) run
in order in one ``bash -euo pipefail`` script, so a block that drifts from the code fails here.

A block that must not run (it needs real weights, a dataset on disk, hours) is marked on the
closest non-blank line above its opening fence::

    <!-- docs-test: skip needs the 11 benchmark datasets on disk -->
    ```bash
    fewclip bench ...
    ```

and shows up as a skip with that reason in the ``-ra`` summary. The reason is required.

In a ``console`` block only the lines that start with ``$ `` are commands (a line ending with
``\\`` continues on the next); the other lines are output and are not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PYTHON_LANGS = frozenset({"python", "py", "python3"})
SHELL_LANGS = frozenset({"bash", "sh", "shell", "console"})
RUNNABLE_LANGS = PYTHON_LANGS | SHELL_LANGS

PYTHON_TIMEOUT_S = 60
SHELL_TIMEOUT_S = 120
TAIL_LINES = 40

_FENCE_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test\s*:(?P<body>.*?)-->\s*$")
_MARKER_START = re.compile(r"^\s*<!--\s*docs-test\b")


# --------------------------------------------------------------------------------------------
# The markdown parser
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: str  # the markdown file, relative to the repo (or a label for inline text)
    line: int  # 1-based line of the opening fence
    lang: str  # first word of the info string, lower-cased ("" when there is none)
    lines: tuple[str, ...]  # the content lines, the fence's indentation removed
    skip: str | None = None  # the skip reason; "" for a marker without a reason
    marker_line: int | None = None  # the line of the skip marker
    closed: bool = True  # False when the file ends before the closing fence

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str | None:
        """``"python"``, ``"shell"`` or None (a language that is not run)."""
        if self.lang in PYTHON_LANGS:
            return "python"
        if self.lang in SHELL_LANGS:
            return "shell"
        return None

    @property
    def runnable(self) -> bool:
        return self.kind is not None and self.skip is None

    @property
    def source(self) -> str:
        return "".join(ln + "\n" for ln in self.lines)

    def commands(self) -> list[tuple[int, str]]:
        """The shell lines to run as (markdown line, text).

        Every line of a bash/sh/shell block; for a console block, the ``$ `` lines with the
        prompt stripped, plus the continuation lines of a command that ends with ``\\``."""
        first = self.line + 1
        if self.lang != "console":
            return [(first + i, ln) for i, ln in enumerate(self.lines)]
        out: list[tuple[int, str]] = []
        continued = False
        for i, ln in enumerate(self.lines):
            if continued:
                out.append((first + i, ln))
            elif ln.startswith("$ "):
                out.append((first + i, ln[2:]))
            else:
                continue
            continued = ln.rstrip().endswith("\\")
        return out


@dataclass
class ParsedMarkdown:
    blocks: list[Block] = field(default_factory=list)
    #: problems that are not a block's: (line, message), e.g. a marker that precedes no fence.
    problems: list[tuple[int, str]] = field(default_factory=list)


def _parse_marker(line: str) -> tuple[str, str] | None:
    """("skip", reason) for a docs-test marker, ("?", text) for a malformed one, else None."""
    if not _MARKER_START.match(line):
        return None
    m = _MARKER.match(line)
    if m is None:
        return ("?", line.strip())
    body = m.group("body").strip()
    word, _, rest = body.partition(" ")
    if word.rstrip(":") != "skip":
        return ("?", line.strip())
    return ("skip", rest.strip().lstrip(":").strip())


def parse_markdown(text: str, path: str = "<inline>") -> ParsedMarkdown:
    """The fenced code blocks of ``text`` (``` or ~~~ fences, CommonMark rules) with their
    opening lines, languages and skip markers."""
    result = ParsedMarkdown()
    lines = text.splitlines()
    # the last non-blank line outside a block: (line number, text)
    previous: tuple[int, str] | None = None
    pending_marker: tuple[int, tuple[str, str]] | None = None
    i = 0
    while i < len(lines):
        raw = lines[i]
        m = _FENCE_OPEN.match(raw)
        fence = m.group("fence") if m else ""
        info = m.group("info").strip() if m else ""
        if m is None or (fence[0] == "`" and "`" in info):
            # not an opening fence (a backtick fence's info string cannot hold a backtick)
            if raw.strip():
                if pending_marker is not None:
                    result.problems.append(
                        (pending_marker[0], "docs-test marker is not followed by a code block")
                    )
                    pending_marker = None
                marker = _parse_marker(raw)
                if marker is not None:
                    if marker[0] == "?":
                        result.problems.append(
                            (
                                i + 1,
                                f"unknown docs-test marker {marker[1]!r}; "
                                "expected <!-- docs-test: skip REASON -->",
                            )
                        )
                    else:
                        pending_marker = (i + 1, marker)
                previous = (i + 1, raw)
            i += 1
            continue
        indent = len(m.group("indent"))
        lang = info.split()[0].lower() if info else ""
        start = i + 1
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        content: list[str] = []
        j = i + 1
        closed = False
        while j < len(lines):
            if closing.match(lines[j]):
                closed = True
                break
            ln = lines[j]
            strip = len(ln) - len(ln.lstrip(" "))
            content.append(ln[min(indent, strip) :])
            j += 1
        skip = marker_line = None
        if pending_marker is not None and previous is not None and previous[0] == pending_marker[0]:
            marker_line, (_, skip) = pending_marker
        pending_marker = None
        result.blocks.append(Block(path, start, lang, tuple(content), skip, marker_line, closed))
        previous = (j + 1, lines[j] if j < len(lines) else "")
        i = j + 1
    if pending_marker is not None:
        result.problems.append(
            (pending_marker[0], "docs-test marker is not followed by a code block")
        )
    return result


# --------------------------------------------------------------------------------------------
# Discovery (at collection time)
# --------------------------------------------------------------------------------------------


def markdown_files() -> list[str]:
    """README.md and docs/**/*.md, relative to the repo, in a stable order."""
    files = [REPO / "README.md"] if (REPO / "README.md").is_file() else []
    files += sorted((REPO / "docs").rglob("*.md"))
    return [p.relative_to(REPO).as_posix() for p in files]


def parse_file(rel: str) -> ParsedMarkdown:
    return parse_markdown((REPO / rel).read_text(encoding="utf-8"), rel)


_PARSED = {rel: parse_file(rel) for rel in markdown_files()}
_FILES = list(_PARSED)


def _runnable(rel: str, kind: str) -> list[Block]:
    return [b for b in _PARSED[rel].blocks if b.runnable and b.kind == kind]


PYTHON_FILES = [rel for rel in _FILES if _runnable(rel, "python")]
SHELL_FILES = [rel for rel in _FILES if _runnable(rel, "shell")]
SKIPPED_BLOCKS = [b for rel in _FILES for b in _PARSED[rel].blocks if b.kind and b.skip is not None]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int | None  # None when it was killed at the timeout
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_process(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float, merge: bool = False
) -> Outcome:
    """Run ``argv`` in its own process group; at the timeout kill the whole group (a shell's
    children included) and return what it printed so far."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    rc: int | None
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        rc = None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    finally:
        _kill_group(proc)  # anything a block left running in the background
    return Outcome(rc, out or "", err or "")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def tail(text: str, n: int = TAIL_LINES) -> str:
    lines = text.rstrip().splitlines()
    cut = lines[-n:]
    head = f"[... {len(lines) - n} earlier lines ...]\n" if len(lines) > n else ""
    return head + "\n".join(cut) if cut else "(nothing)"


def last_progress(path: Path) -> str | None:
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return lines[-1] if lines else None


# The driver runs a file's python blocks in one namespace. It gets a JSON list of
# {"name", "where", "first"}: "name" is the compile() filename ("<docs/x.md:LINE>"), "first" the
# markdown line of the block's first content line.
_DRIVER = r"""
import json, linecache, sys, traceback

def main():
    blocks_path, progress_path = sys.argv[1], sys.argv[2]
    with open(blocks_path, encoding="utf-8") as f:
        blocks = json.load(f)
    namespace = {"__name__": "__main__"}
    for block in blocks:
        name, source = block["name"], block["source"]
        with open(progress_path, "a", encoding="utf-8") as f:
            f.write(block["where"] + "\n")
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        try:
            exec(compile(source, name, "exec"), namespace)
        except SystemExit as exc:
            if exc.code in (None, 0):
                continue
            fail(block, exc, None)
        except BaseException as exc:
            fail(block, exc, exc.__traceback__.tb_next)
    sys.stdout.flush()

def fail(block, exc, tb):
    traceback.print_exception(type(exc), exc, tb)
    line = None
    if isinstance(exc, SyntaxError) and exc.filename == block["name"]:
        line = exc.lineno
    t = tb
    while t is not None:
        if t.tb_frame.f_code.co_filename == block["name"]:
            line = t.tb_lineno
        t = t.tb_next
    at = f" at {block['path']}:{block['first'] + line - 1}" if line else ""
    msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
    print(f"docs-test: block {block['where']} failed{at}: {msg[0] if msg else ''}",
          file=sys.stderr)
    sys.stderr.flush()
    sys.exit(1)

main()
"""


def run_python_blocks(
    blocks: list[Block], work: Path, env: dict[str, str], timeout: float = PYTHON_TIMEOUT_S
) -> None:
    """Run ``blocks`` in order in one fresh interpreter in ``work``; fail with the block's
    file:line and the stderr tail."""
    harness = work.parent / "docs-test"
    harness.mkdir(exist_ok=True)
    driver = harness / "driver.py"
    driver.write_text(_DRIVER, encoding="utf-8")
    spec = [
        {
            "name": f"<{b.where}>",
            "where": b.where,
            "path": b.path,
            "first": b.line + 1,
            "source": b.source,
        }
        for b in blocks
    ]
    (harness / "blocks.json").write_text(json.dumps(spec), encoding="utf-8")
    progress = harness / "progress.txt"
    res = run_process(
        [sys.executable, str(driver), str(harness / "blocks.json"), str(progress)],
        cwd=work,
        env=env,
        timeout=timeout,
    )
    where = last_progress(progress) or blocks[0].where
    if res.timed_out:
        pytest.fail(
            f"{where}: the python blocks of {blocks[0].path} did not finish within "
            f"{timeout:g} s (the block at {where} was running)\n"
            f"--- stderr (tail) ---\n{tail(res.stderr)}\n--- stdout (tail) ---\n{tail(res.stdout)}",
            pytrace=False,
        )
    if res.returncode != 0:
        summary = [ln for ln in res.stderr.splitlines() if ln.startswith("docs-test: block ")]
        head = summary[-1] if summary else f"python exited with code {res.returncode}"
        pytest.fail(
            f"{where}: python block failed\n{head}\n--- stderr (tail) ---\n{tail(res.stderr)}",
            pytrace=False,
        )


def shell_script(blocks: list[Block], progress: Path) -> tuple[str, dict[int, int]]:
    """The bash script that runs ``blocks`` in order, and script line → markdown line."""
    q = _shell_quote(str(progress))
    lines = [
        f'trap \'printf "ERR %s\\n" "$LINENO" >> {q}\' ERR',
    ]
    where: dict[int, int] = {}
    for b in blocks:
        lines.append(f"printf '%s\\n' {_shell_quote('BLOCK ' + b.where)} >> {q}")
        for md_line, text in b.commands():
            lines.append(text)
            where[len(lines)] = md_line
    return "\n".join(lines) + "\n", where


def _shell_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def run_shell_blocks(
    blocks: list[Block], work: Path, env: dict[str, str], timeout: float = SHELL_TIMEOUT_S
) -> None:
    """Run ``blocks`` in order with ``bash -euo pipefail`` in ``work``; fail with the block's
    file:line and the output tail."""
    harness = work.parent / "docs-test"
    harness.mkdir(exist_ok=True)
    progress = harness / "progress.txt"
    script, where_of = shell_script(blocks, progress)
    path = harness / "blocks.sh"
    path.write_text(script, encoding="utf-8")
    res = run_process(
        ["bash", "-euo", "pipefail", str(path)],
        cwd=work,
        env=env,
        timeout=timeout,
        merge=True,
    )
    block_where = blocks[0].where
    failed_line: int | None = None
    if progress.is_file():
        for entry in progress.read_text().splitlines():
            kind, _, value = entry.partition(" ")
            if kind == "BLOCK":
                block_where = value
            elif kind == "ERR" and value.isdigit() and failed_line is None:
                failed_line = where_of.get(int(value))
    if res.timed_out:
        pytest.fail(
            f"{block_where}: the shell blocks of {blocks[0].path} did not finish within "
            f"{timeout:g} s (the block at {block_where} was running)\n"
            f"--- output (tail) ---\n{tail(res.stdout)}",
            pytrace=False,
        )
    if res.returncode != 0:
        at = f", at {blocks[0].path}:{failed_line}" if failed_line else ""
        pytest.fail(
            f"{block_where}: shell block failed (exit {res.returncode}{at})\n"
            f"--- output (tail) ---\n{tail(res.stdout)}",
            pytrace=False,
        )


# --------------------------------------------------------------------------------------------
# The tests over the documentation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("md", PYTHON_FILES)
def test_python_blocks(md: str, python_workspace: tuple[Path, dict[str, str]]) -> None:
    work, env = python_workspace
    run_python_blocks(_runnable(md, "python"), work, env)


@pytest.mark.parametrize("md", SHELL_FILES)
def test_shell_blocks(md: str, shell_workspace: tuple[Path, dict[str, str]]) -> None:
    work, env = shell_workspace
    run_shell_blocks(_runnable(md, "shell"), work, env)


@pytest.mark.parametrize("block", SKIPPED_BLOCKS, ids=[b.where for b in SKIPPED_BLOCKS])
def test_skipped_block(block: Block) -> None:
    if not block.skip:
        pytest.fail(
            f"{block.path}:{block.marker_line}: the docs-test skip marker of the {block.lang} "
            f"block at {block.where} has no reason; a reason is required: "
            "<!-- docs-test: skip REASON -->",
            pytrace=False,
        )
    pytest.skip(block.skip)


@pytest.mark.parametrize("md", _FILES)
def test_markdown_well_formed(md: str) -> None:
    """Every docs-test marker belongs to a code block, and every runnable block is closed."""
    parsed = _PARSED[md]
    problems = [f"{md}:{line}: {msg}" for line, msg in parsed.problems]
    problems += [
        f"{b.where}: the {b.lang} block has no closing fence"
        for b in parsed.blocks
        if b.kind and not b.closed
    ]
    assert not problems, "\n".join(problems)


def test_collector_finds_the_docs_blocks() -> None:
    assert "README.md" in _PARSED, "README.md not found at the repo root"
    readme = [b for b in _PARSED["README.md"].blocks if b.runnable]
    assert readme, "the collector found no runnable python/shell block in README.md"
    total = sum(b.runnable for p in _PARSED.values() for b in p.blocks)
    assert total >= 20, (
        f"the collector found only {total} runnable blocks in README.md + docs/ "
        f"({', '.join(_FILES)}); expected at least 20"
    )


# --------------------------------------------------------------------------------------------
# The parser and the runners on inline samples
# --------------------------------------------------------------------------------------------

SAMPLE = """\
# Title

```python
x = 1
```

Some text.
<!-- docs-test: skip needs real weights -->

~~~bash
fewclip demo
~~~

<!-- docs-test: skip -->
```sh
false
```

````markdown
```python
not a block of its own
```
````

```
plain, no language
```

```Python title="example.py"
y = x + 1
```

```console
$ echo one \\
  two
one two
$ fewclip --version
fewclip 1.0
```

```text
$ not run
```

  ```bash
  echo indented
  ```
<!-- docs-test: skip dangling -->

Text after a dangling marker.
"""


def test_parser_on_a_sample() -> None:
    parsed = parse_markdown(SAMPLE, "sample.md")
    got = [(b.line, b.lang, b.kind, b.skip) for b in parsed.blocks]
    assert got == [
        (3, "python", "python", None),
        (10, "bash", "shell", "needs real weights"),
        (15, "sh", "shell", ""),
        (19, "markdown", None, None),
        (25, "", None, None),
        (29, "python", "python", None),
        (33, "console", "shell", None),
        (41, "text", None, None),
        (45, "bash", "shell", None),
    ]
    by_line = {b.line: b for b in parsed.blocks}
    assert by_line[3].source == "x = 1\n"
    assert by_line[19].lines == ("```python", "not a block of its own", "```")
    assert by_line[10].lines == ("fewclip demo",)
    assert by_line[10].marker_line == 8
    assert by_line[33].commands() == [(34, "echo one \\"), (35, "  two"), (37, "fewclip --version")]
    assert by_line[45].lines == ("echo indented",)
    assert by_line[45].commands() == [(46, "echo indented")]
    assert all(b.closed for b in parsed.blocks)
    assert [b.line for b in parsed.blocks if b.runnable] == [3, 29, 33, 45]
    assert parsed.problems == [(48, "docs-test marker is not followed by a code block")]


def test_parser_edge_cases() -> None:
    # a marker applies only when it is the closest non-blank line above the fence
    text = "<!-- docs-test: skip far away -->\nText.\n\n```bash\nls\n```\n"
    parsed = parse_markdown(text)
    assert parsed.blocks[0].skip is None
    assert parsed.problems == [(1, "docs-test marker is not followed by a code block")]
    # a marker just above a block's closing fence does not reach the next block
    text = "```python\n<!-- docs-test: skip inside -->\n```\n```python\npass\n```\n"
    parsed = parse_markdown(text)
    assert [b.skip for b in parsed.blocks] == [None, None]
    assert parsed.problems == []
    # an unclosed fence runs to the end of the file and is reported
    parsed = parse_markdown("text\n```bash\necho hi\n")
    assert parsed.blocks[0].lines == ("echo hi",)
    assert not parsed.blocks[0].closed
    # a fence is closed only by the same character, at least as long, without an info string
    parsed = parse_markdown("~~~~python\n~~~\n```\n~~~~ x\n~~~~~\n")
    assert parsed.blocks[0].lines == ("~~~", "```", "~~~~ x")
    # a marker with an unknown directive is reported; a colon after skip is allowed
    parsed = parse_markdown("<!-- docs-test: run -->\n<!-- docs-test: skip: slow -->\n```sh\n```\n")
    assert parsed.problems[0][0] == 1
    assert "unknown docs-test marker" in parsed.problems[0][1]
    assert parsed.blocks[0].skip == "slow"
    # `$` lines only; a continuation keeps going while lines end with a backslash
    block = parse_markdown("```console\n$ a \\\n b \\\n c\nout \\\n$ d\n```\n").blocks[0]
    assert block.commands() == [(2, "a \\"), (3, " b \\"), (4, " c"), (6, "d")]


def test_the_repo_docs_are_found() -> None:
    assert "README.md" in _FILES
    assert all(f == "README.md" or f.startswith("docs/") for f in _FILES)
    assert len(PYTHON_FILES) + len(SHELL_FILES) > 0


def test_python_runner_reports_file_and_line(
    python_workspace: tuple[Path, dict[str, str]],
) -> None:
    work, env = python_workspace
    blocks = parse_markdown(
        "```python\nimport os\nvalue = os.environ['FEWCLIP_STORE']\n```\n\n"
        "```python\nassert os.environ['OMP_NUM_THREADS'] == '1'\n"
        "print(value)\n\nraise ValueError('boom')\n```\n",
        "docs/sample.md",
    ).blocks
    with pytest.raises(pytest.fail.Exception) as info:
        run_python_blocks(blocks, work, env)
    msg = str(info.value)
    assert msg.startswith("docs/sample.md:6: python block failed")
    assert "docs-test: block docs/sample.md:6 failed at docs/sample.md:10: ValueError: boom" in msg
    assert 'File "<docs/sample.md:6>", line 4' in msg
    assert "raise ValueError('boom')" in msg  # the source line, from linecache


def test_shell_runner_reports_file_and_line(
    shell_workspace: tuple[Path, dict[str, str]],
) -> None:
    work, env = shell_workspace
    assert sorted(p.name for p in (work / "my_photos").iterdir()) == ["bird", "cat", "dog"]
    assert len(list((work / "new_photos").iterdir())) == 3
    blocks = parse_markdown(
        "```bash\ntest -f my_photos/cat/broken.jpg\nls new_photos | wc -l\n```\n\n"
        "```console\n$ echo start\nstart\n$ command -v fewclip\n$ false | cat\n```\n",
        "docs/sample.md",
    ).blocks
    with pytest.raises(pytest.fail.Exception) as info:
        run_shell_blocks(blocks, work, env)
    msg = str(info.value)
    assert msg.startswith("docs/sample.md:6: shell block failed (exit 1, at docs/sample.md:10)")
    assert str(Path(sys.executable).parent / "fewclip") in msg


def test_python_runner_times_out_naming_the_block(
    python_workspace: tuple[Path, dict[str, str]],
) -> None:
    work, env = python_workspace
    blocks = parse_markdown(
        "```python\nx = 1\n```\n\n```python\nimport time\ntime.sleep(60)\n```\n", "docs/s.md"
    ).blocks
    with pytest.raises(pytest.fail.Exception) as info:
        run_python_blocks(blocks, work, env, timeout=3)
    assert str(info.value).startswith(
        "docs/s.md:5: the python blocks of docs/s.md did not finish within 3 s"
    )


def test_shell_runner_times_out_and_kills_the_children(
    shell_workspace: tuple[Path, dict[str, str]],
) -> None:
    work, env = shell_workspace
    blocks = parse_markdown(
        "```sh\necho first\n```\n\n```bash\n(sleep 60; touch late) &\nsleep 60\n```\n",
        "docs/s.md",
    ).blocks
    with pytest.raises(pytest.fail.Exception) as info:
        run_shell_blocks(blocks, work, env, timeout=3)
    msg = str(info.value)
    assert msg.startswith("docs/s.md:5: the shell blocks of docs/s.md did not finish within 3 s")
    assert "first" in msg


def test_a_skip_marker_needs_a_reason() -> None:
    block = parse_markdown("<!-- docs-test: skip   -->\n```bash\nfalse\n```\n", "s.md").blocks[0]
    assert block.skip == ""
    assert block.marker_line == 1
    assert not block.runnable
    with pytest.raises(pytest.fail.Exception, match="a reason is required"):
        test_skipped_block(block)
    block = parse_markdown("<!-- docs-test: skip slow -->\n```bash\nfalse\n```\n", "s.md").blocks[0]
    with pytest.raises(pytest.skip.Exception, match="^slow$"):
        test_skipped_block(block)
