"""Evaluation: test-time adaptation, the k x s protocol, oracles, guards, scoring and the report."""
