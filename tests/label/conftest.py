"""The ``label`` marker: tests of the MONAI Label app, which need the ``label`` extra (pip install -e ".[label]").

Without the extra the tests skip. With ``MONAI_RD_REQUIRE_LABEL=1`` (set by CI's label leg, ``.ci/run``) a missing
or broken install is an error instead, so that the label tests cannot pass by being skipped.
"""

import os

import pytest

REQUIRE_LABEL = "MONAI_RD_REQUIRE_LABEL"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "label: needs monailabel (pip install -e \".[label]\"); starts a real MONAI Label server on 127.0.0.1",
    )
    if os.environ.get(REQUIRE_LABEL, "0") not in ("", "0"):
        try:  # what the tests import: monailabel itself and the HTTP client of the server test
            import monailabel.datastore.local  # noqa: F401
            import requests  # noqa: F401
        except Exception as e:  # an ImportError, or anything a half-installed package raises on import
            raise pytest.UsageError(
                f"{REQUIRE_LABEL}={os.environ[REQUIRE_LABEL]} but the label extra does not import "
                f"({type(e).__name__}: {e}): install it with pip install -e \".[dev,label]\", or unset {REQUIRE_LABEL} "
                "to skip the label tests."
            ) from e
