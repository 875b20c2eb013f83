"""Benchmarks of ordersync against baselines measured in the same run.

`python -m bench ingest|worker|latency|scale|backlog|all [--quick]`; see docs/performance.md.
"""
