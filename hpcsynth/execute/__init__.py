"""execute: where workers run (local processes or Slurm arrays); the only place that knows Slurm."""
