"""The `python -m monai.bundle` commands a Markdown file documents, for the tests that run them exactly as typed."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def doc_commands(path: str, prefixes: tuple[str, ...] = ("python -m monai.bundle", "torchrun ")) -> list[str]:
    """The commands of a Markdown file's bash blocks that start with one of ``prefixes``, continuation lines joined.

    Args:
        path: the Markdown file, relative to the repository root (e.g. ``bundles/rd_demo/docs/README.md``).
        prefixes: the command starts to collect (by default `python -m monai.bundle` and `torchrun`).

    Returns:
        The commands in document order, each on one line with its trailing ``# comment`` dropped (as bash does) and
        runs of blanks collapsed; the text is otherwise unchanged.
    """
    text = open(os.path.join(REPO, path)).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(tuple(prefixes)):
                commands.append(" ".join(re.sub(r"\s#\s.*$", "", line).split()))  # comment dropped, as bash does
    return commands


def doc_variables(path: str) -> str:
    """The shell variable assignments (``B=bundles/<name>/configs``) of a Markdown file's bash blocks, as one prelude.

    Args:
        path: the Markdown file, relative to the repository root.

    Returns:
        ``"B=...; "`` (every ``NAME=value`` line, in document order, each followed by ``; ``), to put before a command
        of :func:`doc_commands` so it runs with the variables the document sets.
    """
    text = open(os.path.join(REPO, path)).read()
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    return "".join(f"{line}; " for line in lines if re.fullmatch(r"[A-Za-z_]\w*=\S+", line))
