"""Compare RD with its ablations and the baselines on a bundle's own data: ``python -m monai_rd.compare``.

The methods themselves are :mod:`monai_rd.methods`.
"""
