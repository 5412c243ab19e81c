"""Segmentation: training sources, the one training loop (DDP-aware), inference."""
