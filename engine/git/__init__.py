"""Git isolation: a worktree per attempt, the run's branch, the merge queue, cleanup."""
