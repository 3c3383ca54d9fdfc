"""Training, backtests, baselines, metrics, tuning, MLflow logging and promotion."""
