"""The map's work items: where they come from, which are kept, in what order, and who they are."""
