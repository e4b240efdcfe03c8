"""DecFlow: facial optical flow decomposed into head and expression motion."""
