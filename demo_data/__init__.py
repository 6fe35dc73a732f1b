"""Scripts that rebuild the demo data shipped with the bundles from Debian's ``mricron-data`` (Colin27 MRI and
atlases); not part of the installed library. Run from the repository root, e.g.
``python -m demo_data.brain_lobes --out bundles/rd_demo/data``."""
