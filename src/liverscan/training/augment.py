"""Training-only augmentation with Keras preprocessing layers (backend-agnostic).

The paper's settings: zoom +-10%, brightness +-20%, horizontal flip (50%),
rotation +-15 degrees.  Brightness is a multiplicative gain (x * U(0.8, 1.2),
like Keras' ImageDataGenerator ``brightness_range``) so the black area outside
the scan fan stays black; rotation and zoom fill with black for the same reason.
"""

from __future__ import annotations

import numpy as np

from liverscan.core.config import AugmentConfig
from liverscan.core.keras_env import import_keras


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


def _random_affine_layer():
    keras = import_keras()

    class RandomAffine(keras.layers.Layer):
        """Rotation, zoom and horizontal flip composed into ONE bilinear affine warp per image.

        Equivalent in distribution to Keras' RandomRotation + RandomZoom + RandomFlip
        (black fill), at a third of the resampling cost.
        """

        def __init__(self, rotation_degrees: float, zoom: float, flip: bool, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.rotation_degrees = float(rotation_degrees)
            self.zoom = float(zoom)
            self.flip = bool(flip)
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs, training=True):
            if not training:
                return inputs
            ops = keras.ops
            x = ops.cast(inputs, "float32")
            shape = ops.shape(x)
            n, h, w = shape[0], shape[1], shape[2]
            limit = self.rotation_degrees * np.pi / 180.0
            theta = keras.random.uniform((n,), -limit, limit, seed=self.seed_generator)
            scale = keras.random.uniform((n,), 1.0 - self.zoom, 1.0 + self.zoom, seed=self.seed_generator)
            if self.flip:
                coin = keras.random.uniform((n,), 0.0, 1.0, seed=self.seed_generator)
                sign = ops.where(coin < 0.5, -1.0, 1.0)
            else:
                sign = ops.ones((n,))
            cos, sin = ops.cos(theta) * scale, ops.sin(theta) * scale
            cx = (ops.cast(w, "float32") - 1.0) / 2.0
            cy = (ops.cast(h, "float32") - 1.0) / 2.0
            # input = c + scale * R(theta) @ diag(sign, 1) @ (output - c)
            a0, a1 = cos * sign, -sin
            b0, b1 = sin * sign, cos
            a2 = cx - a0 * cx - a1 * cy
            b2 = cy - b0 * cx - b1 * cy
            zeros = ops.zeros((n,))
            transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
            return ops.image.affine_transform(
                x,
                transform,
                interpolation="bilinear",
                fill_mode="constant",
                fill_value=0.0,
                data_format="channels_last",
            )

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "rotation_degrees": self.rotation_degrees,
                "zoom": self.zoom,
                "flip": self.flip,
                "seed": self.seed,
            }

    return RandomAffine


def build_augmenter(cfg: AugmentConfig, seed: int):
    """A Sequential of random layers; call it with ``training=True`` on float32 0..255 batches."""
    keras = import_keras()
    layers = []
    if cfg.horizontal_flip or cfg.rotation_degrees or cfg.zoom:
        layers.append(
            _random_affine_layer()(cfg.rotation_degrees, cfg.zoom, cfg.horizontal_flip, seed=seed, name="random_affine")
        )
    if cfg.brightness:
        layers.append(_random_gain_layer()(cfg.brightness, seed=seed + 3, name="random_gain"))
    return keras.Sequential(layers, name="augment")


def augment_batch(augmenter, batch):
    """Apply ``augmenter`` in training mode to a uint8/float batch; returns float32 numpy."""
    keras = import_keras()
    x = np.asarray(batch, dtype=np.float32)
    if not augmenter.layers:
        return x
    return np.asarray(keras.ops.convert_to_numpy(augmenter(x, training=True)), dtype=np.float32)
