"""Pictures and the neuroglancer viewer."""
