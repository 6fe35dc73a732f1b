"""Import the suite's scripts (benchmarks/suite/*.py, not a package) for the tests in this folder."""

import importlib.util
import os
import sys
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_suite_module(name: str) -> ModuleType:
    """Import ``benchmarks/suite/<name>.py`` as the module ``suite_<name>``.

    Args:
        name: the script's file name without ``.py`` (``"make_tasks"``, ``"run_suite"``).

    Returns:
        The executed module, also registered in ``sys.modules`` (dataclasses look their module up there).
    """
    path = os.path.join(REPO, "benchmarks", "suite", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"suite_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
