"""
The benchmarks: each prints its figures side by side with its baseline in one run.
Run them from the checkout as modules, e.g. C{python -m bench.upgrades}.
"""
