"""Workflows: the spec, loading with FILE:LINE errors, templates and their safety, starters."""
