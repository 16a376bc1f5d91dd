"""The local executor: each attempt's steps as process groups on this machine."""
