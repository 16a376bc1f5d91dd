"""What a run keeps beside its ledger.

The content store, the item cache, artifacts, workspace snapshots.
"""
