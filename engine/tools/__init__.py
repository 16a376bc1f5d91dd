"""Programs the engine ships for tests, examples and benchmarks."""
