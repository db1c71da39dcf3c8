"""The upload helper: pushes a saved instance's committed image to the image server."""
