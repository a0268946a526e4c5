"""What every executor shares: running one item through the DAG, worker isolation, the run
driver (change detection, barriers, commits)."""
