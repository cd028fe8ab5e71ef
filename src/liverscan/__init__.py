"""liverscan: liver B-mode ultrasound classification (normal / fatty liver / tumor).

Importing the package is cheap: TensorFlow/Keras are only imported by the
functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
