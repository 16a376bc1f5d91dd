"""The map phase: the scheduler loop, its pure decisions, and error classification."""
