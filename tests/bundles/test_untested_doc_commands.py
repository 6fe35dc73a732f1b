"""No command in a bash block of README.md or docs/*.md that no test runs.

Every command the README and the docs pages show runs in a test exactly as typed. This module asks each runner which
commands it runs (the doc-command tests' own selections) and fails on any command of those pages that none of them
runs, so a new or changed command cannot be documented without a test. Installs (`pip install`) are the one
exception: they need the network, and CI runs its own.
"""

import os
import re

import pytest
import test_doc_commands as demo_runner  # tests/bundles, on sys.path under pytest
import test_rd_classify as own_data_runner
from doc_commands import FRONT_DOCS, REPO, bash_commands, doc_commands

INSTALL = re.compile(r"^(\S*python\S* -m )?pip install ")
# tests/label/test_monailabel_server.py reads its start command from docs/label.md with this prefix; it imports
# monailabel at module level (it skips without the label extra), so its selection is repeated here, not imported
LABEL_DOC, LABEL_PREFIXES = "docs/label.md", ("monailabel start_server",)
LABEL_RUNNER = "tests/label/test_monailabel_server.py"
# .ci/run_label makes the label venv as docs/label.md tells a user, in its own variables
CI_LABEL_NAMES = {
    '"$LABEL_VENV/bin/python"': ".venv-label/bin/python",
    '"$LABEL_VENV/torch-constraints.txt"': ".venv-label/torch-constraints.txt",
    '"$LABEL_VENV"': ".venv-label",
    '"$PYTHON"': "python",
}


def ci_commands(script: str, names: dict[str, str] | None = None) -> set[str]:
    """The command lines of a CI script, continuation lines joined and blanks collapsed, its variables renamed.

    Args:
        script: the script, relative to the repository root (``.ci/run``).
        names: text -> the docs' text for it (e.g. ``'"$PYTHON"'`` -> ``python``), replaced in this order.
    """
    text = open(os.path.join(REPO, script)).read().replace("\\\n", " ")
    commands = set()
    for line in text.splitlines():
        for name, docs_name in (names or {}).items():
            line = line.replace(name, docs_name)
        commands.add(" ".join(line.split()))
    return commands


def runner_commands() -> dict[str, set[str]]:
    """Runner -> the commands of the docs it runs as typed (placeholders filled in where the runner does)."""
    return {
        "tests/bundles/test_doc_commands.py": set(demo_runner.documented_commands()),
        "tests/bundles/test_rd_classify.py": set(own_data_runner.doc_commands()),
        LABEL_RUNNER: set(doc_commands(LABEL_DOC, LABEL_PREFIXES)),
        ".ci/run": ci_commands(".ci/run"),
        ".ci/run_label": ci_commands(".ci/run_label", CI_LABEL_NAMES),
    }


def untested(paths) -> list[str]:
    """``"<doc>: <command>"`` for every command of ``paths``' bash blocks that no runner runs (installs aside)."""
    covered = set().union(*runner_commands().values())
    return [f"{p}: {c}" for p in paths for c in bash_commands(p) if not INSTALL.match(c) and c not in covered]


def test_every_command_of_the_readme_and_docs_runs_in_a_test():
    """Catches a command added to or changed in README.md or docs/*.md that no test runs as typed."""
    assert "README.md" in FRONT_DOCS and "docs/methods.md" in FRONT_DOCS
    missing = untested(FRONT_DOCS)
    assert not missing, (
        "documented commands no test runs; run them in a doc-command test (tests/bundles/test_doc_commands.py's DOCS "
        "and prefixes, or the test of that bundle's docs):\n" + "\n".join(missing)
    )


def test_the_readme_and_docs_show_commands_of_every_kind_the_runners_cover():
    """Catches a check that passes because it reads nothing: the pages show the demo's, your own data's, the label
    server's and the test command, and each runner's selection is not empty."""
    shown = [c for doc in FRONT_DOCS for c in bash_commands(doc)]
    for start in ("python -m monai.bundle", "torchrun ", "python -m monai_rd.make_datalist",
                  "python -m monai_rd.export", "python -m monai_rd.compare", "monailabel start_server",
                  "python -m pytest tests -q"):
        assert any(c.startswith(start) for c in shown), start
    assert all(runner_commands().values())


def test_the_check_sees_an_untested_command(tmp_path):
    """Catches a check that lets an untested command through (a new option on a documented command included), or
    that counts an install, a variable or a comment as a command."""
    doc = tmp_path / "new.md"
    doc.write_text(
        "Text.\n\n```bash\nB=bundles/rd_demo/configs\n# a comment\npip install -e \".[dev]\"\n"
        "python -m monai.bundle run --config_file bundles/rd_demo/configs/train.json\n"
        "python -m monai.bundle run --config_file $B/train.json --epochs 7   # one option more\n"
        "python -m monai_rd.new_tool \\\n    --flag\n```\n"
    )
    assert untested([str(doc)]) == [
        f"{doc}: python -m monai.bundle run --config_file $B/train.json --epochs 7",
        f"{doc}: python -m monai_rd.new_tool --flag",
    ]


def test_the_label_runner_reads_its_command_from_the_label_docs():
    """Catches the label server test reading its command from elsewhere than this module assumes (its selection is
    repeated here because importing it needs monailabel)."""
    source = open(os.path.join(REPO, LABEL_RUNNER)).read()
    assert 'os.path.join("docs", "label.md")' in source and '"monailabel start_server"' in source
    assert len(doc_commands(LABEL_DOC, LABEL_PREFIXES)) == 1


@pytest.mark.parametrize("script", [".ci/run", ".ci/run_label"])
def test_ci_scripts_are_read_as_commands(script):
    """Catches a CI reader that joins nothing (the label venv's set-up spans continuation lines)."""
    commands = ci_commands(script, CI_LABEL_NAMES)
    assert not any(c.endswith("\\") for c in commands)
    if script == ".ci/run":
        assert "python -m pytest tests -q" in commands
    else:
        assert "python -m venv .venv-label" in commands
