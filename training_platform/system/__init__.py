"""System tasks: broker round trips for health checks, benchmarks and queue-order tests."""
