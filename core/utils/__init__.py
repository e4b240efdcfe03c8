"""Flow/frame I/O, visualisation, augmentation and padding helpers."""
