"""Machinery behind `make run`, `make test` and CI: engine set-up, local image builds, cleanup.

Run the Python parts as modules from the repository root, e.g. ``python -m scripts.build_images``.
"""
