"""segsynth: synthetic paired training data for low-data medical image segmentation.

The flow (see DESIGN.md): data -> generators -> segment -> evaluate -> experiments/report.
"""

__version__ = "0.1.0"
