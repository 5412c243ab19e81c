"""The folder nnU-Net searches for segsynth's trainer (``nnUNet_extTrainer``, set for the run's subprocesses).

nnU-Net imports every module of this folder as a top-level module, so its modules import nnunetv2 only.
"""
