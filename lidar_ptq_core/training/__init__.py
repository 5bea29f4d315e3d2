"""Training of the FP32 detectors on the synthetic benchmark: targets, losses, augmentation, the loop."""
