"""Datasets users bring: formats, validation by row, upload, and preparation for backends."""
