"""Quality tooling: metrics, the benchmark's degradation family, classical baselines."""
