"""Grids: grid files and run identity, the local and SLURM launchers."""
