"""Training-only augmentation with Keras preprocessing layers (backend-agnostic).

The paper's settings: zoom +-10%, brightness +-20%, horizontal flip (50%),
rotation +-15 degrees.  Brightness is a multiplicative gain (x * U(0.8, 1.2),
like Keras' ImageDataGenerator ``brightness_range``) so the black area outside
the scan fan stays black; rotation and zoom fill with black for the same reason.
"""

from __future__ import annotations

from liverscan.config import AugmentConfig
from liverscan.keras_env import import_keras


def _random_gain_layer():
    keras = import_keras()

    class RandomGain(keras.layers.Layer):
        """Multiply each image by a random factor in [1 - delta, 1 + delta], clip to 0..255."""

        def __init__(self, delta: float, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.delta = float(delta)
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs, training=True):
            if not training or self.delta <= 0:
                return inputs
            ops = keras.ops
            n = ops.shape(inputs)[0]
            gain = keras.random.uniform((n, 1, 1, 1), 1.0 - self.delta, 1.0 + self.delta, seed=self.seed_generator)
            return ops.clip(ops.cast(inputs, "float32") * gain, 0.0, 255.0)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "delta": self.delta, "seed": self.seed}

    return RandomGain


def build_augmenter(cfg: AugmentConfig, seed: int):
    """A Sequential of random layers; call it with ``training=True`` on float32 0..255 batches."""
    keras = import_keras()
    layers = []
    if cfg.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation_degrees:
        layers.append(
            keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode="constant", fill_value=0.0, seed=seed + 1)
        )
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, cfg.zoom, fill_mode="constant", fill_value=0.0, seed=seed + 2))
    if cfg.brightness:
        layers.append(_random_gain_layer()(cfg.brightness, seed=seed + 3, name="random_gain"))
    return keras.Sequential(layers, name="augment")


def augment_batch(augmenter, batch):
    """Apply ``augmenter`` in training mode to a uint8/float batch; returns float32 numpy."""
    keras = import_keras()
    import numpy as np

    x = np.asarray(batch, dtype=np.float32)
    if not augmenter.layers:
        return x
    return np.asarray(keras.ops.convert_to_numpy(augmenter(x, training=True)), dtype=np.float32)
