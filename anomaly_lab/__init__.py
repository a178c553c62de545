"""Masked U-Net autoencoders for unsupervised visual anomaly detection."""
