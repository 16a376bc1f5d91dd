"""A run from start to end: create, resume, recovery, the phases, control."""
