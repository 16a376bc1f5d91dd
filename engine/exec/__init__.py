"""Executors: what runs an attempt, and the step semantics every executor shares."""
