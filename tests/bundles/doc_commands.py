"""The commands a Markdown file documents, for the tests that run them exactly as typed."""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the README and the topic pages: every command of their bash blocks runs in a test (test_untested_doc_commands.py)
FRONT_DOCS = ("README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))))
# a placeholder the reader replaces (`<run>`, `<class_folders>`): bash would read it as a redirection, so such a
# command runs only in a test that fills it in
PLACEHOLDER = re.compile(r"<[A-Za-z_][^<>]*>")
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=\S+")


def _bash_lines(path: str) -> list[str]:
    text = open(os.path.join(REPO, path)).read()
    return [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]


def bash_commands(path: str) -> list[str]:
    """Every command of a Markdown file's bash blocks, as bash would read it.

    Args:
        path: the Markdown file, relative to the repository root (or absolute).

    Returns:
        The commands in document order, continuation lines joined, a trailing ``# comment`` dropped (as bash does) and
        runs of blanks collapsed; blank lines, comment lines and shell variable assignments (``B=...``, see
        :func:`doc_variables`) are left out. The text is otherwise unchanged.
    """
    commands = []
    for line in _bash_lines(path):
        command = " ".join(re.sub(r"\s#\s.*$", "", line).split())  # comment dropped, as bash does
        if command and not command.startswith("#") and not _ASSIGNMENT.fullmatch(command):
            commands.append(command)
    return commands


def doc_commands(path: str, prefixes: tuple[str, ...] = ("python -m monai.bundle", "torchrun ")) -> list[str]:
    """The commands of a Markdown file's bash blocks that start with one of ``prefixes``.

    Args:
        path: the Markdown file, relative to the repository root (e.g. ``bundles/rd_demo/docs/README.md``).
        prefixes: the command starts to collect (by default `python -m monai.bundle` and `torchrun`).

    Returns:
        Those of :func:`bash_commands`, in document order.
    """
    return [c for c in bash_commands(path) if c.startswith(tuple(prefixes))]


def doc_variables(path: str) -> str:
    """The shell variable assignments (``B=bundles/<name>/configs``) of a Markdown file's bash blocks, as one prelude.

    Args:
        path: the Markdown file, relative to the repository root.

    Returns:
        ``"B=...; "`` (every ``NAME=value`` line, in document order, each followed by ``; ``), to put before a command
        of :func:`doc_commands` so it runs with the variables the document sets.
    """
    lines = [line.strip() for line in _bash_lines(path)]
    return "".join(f"{line}; " for line in lines if _ASSIGNMENT.fullmatch(line))
