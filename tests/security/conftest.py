"""The integration tier's image fixtures, for the attacks that need a real pod."""

from tests.integration.conftest import helpers_image, image_builder, tool_image

__all__ = ["helpers_image", "image_builder", "tool_image"]
