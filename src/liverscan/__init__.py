"""liverscan: liver B-mode ultrasound classification (normal / fatty liver / tumor).

Importing the package is cheap: TensorFlow/Keras are only imported by the
functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["Classifier", "Prediction", "__version__"]


def __getattr__(name: str):
    # lazy: `import liverscan` stays cheap; the API loads on first use
    if name in ("Classifier", "Prediction"):
        from liverscan import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'liverscan' has no attribute {name!r}")
