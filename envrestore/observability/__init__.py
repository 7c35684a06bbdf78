"""Metrics and health checks for operators (Prometheus, /healthz, /readyz, `envrestore health`)."""
