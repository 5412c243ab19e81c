"""Low-data experiments: sweeps over methods x N x seeds, and the report."""
