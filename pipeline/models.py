"""Model architectures, registered by name and built from their typed config.

Every model takes raw 48x48x1 pixels in 0-255 (float32) and returns 7 softmax scores in canonical class
order. Rescaling lives inside the graph, so the training loop, the TFLite converter, the benchmark and the
realtime runner all feed the same raw pixels and can never disagree about normalisation. Test-time views
(`with_views`) wrap a trained network at export; they are not part of what trains.

To add an architecture: a schema in `pipeline.config.MODEL_SCHEMAS`, a builder here decorated with
`@architecture(name)`, and a `conf/model/<preset>.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers, ops

from pipeline.config import MODEL_SCHEMAS, ConvNetConfig, ModelConfig, ResNetSEConfig, SeedCNNConfig, ViewsConfig
from pipeline.inference.contract import CLASSES, IMAGE_SIZE

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
# Keras' default 0.99 needs thousands of steps before the moving statistics match the weights; short
# runs (the built-in data trains for a few hundred) then score near chance in inference mode.
BN_MOMENTUM = 0.9
Builder = Callable[[ModelConfig], keras.Model]
ARCHITECTURES: dict[str, Builder] = {}


def architecture(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under the name its config uses in `model.name`."""
    if name not in MODEL_SCHEMAS:
        raise KeyError(f"architecture {name!r} has no schema in pipeline.config.MODEL_SCHEMAS")

    def register(fn: Builder) -> Builder:
        ARCHITECTURES[name] = fn
        return fn

    return register


@keras.saving.register_keras_serializable(package="fer")
class HorizontalFlip(layers.Layer):
    """Mirror images left-right: the test-time-augmentation branch (a TFLite REVERSE_V2 op)."""

    def call(self, x):
        return ops.flip(x, axis=2)


@keras.saving.register_keras_serializable(package="fer")
class CenterZoom(layers.Layer):
    """Zoom in: the central `crop` x `crop` pixels scaled back to the input size (TFLite slice + bilinear resize)."""

    def __init__(self, crop: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crop = crop

    def call(self, x):
        top = (INPUT_SHAPE[0] - self.crop) // 2
        return ops.image.resize(x[:, top:top + self.crop, top:top + self.crop], INPUT_SHAPE[:2])

    def get_config(self) -> dict:
        return {**super().get_config(), "crop": self.crop}


def _pixels_in(name: str = "pixels") -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input(INPUT_SHAPE, name=name)
    return inputs, layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)


@architecture("seed_cnn")
def seed_cnn(cfg: SeedCNNConfig) -> keras.Model:
    """The seed project's CNN exactly (valid padding, 4,232,199 parameters), kept as the baseline."""
    inputs, x = _pixels_in()
    for filters in (128, 256, 512, 512):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(cfg.conv_dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.4)(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name="scores")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_bn_relu(x, filters: int, *, stride: int = 1, separable: bool = False):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.ReLU()(x)


@architecture("convnet")
def convnet(cfg: ConvNetConfig) -> keras.Model:
    """BN-ReLU VGG-style stages; `stem_stride` 2 quarters the MACs of everything after the first conv."""
    inputs, x = _pixels_in()
    for stage, filters in enumerate(cfg.filters):
        for i in range(cfg.convs[stage]):
            first = stage == 0 and i == 0
            x = _conv_bn_relu(x, filters, stride=cfg.stem_stride if first else 1,
                              separable=cfg.separable and not first)
        if stage < len(cfg.filters) - 1:
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    if cfg.dense:
        x = layers.Dropout(cfg.dropout)(x)
        x = layers.Dense(cfg.dense, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.ReLU()(x)
    x = layers.Dropout(cfg.dropout)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name="scores")(x)
    return keras.Model(inputs, outputs, name="convnet")


def _squeeze_excite(x, ratio: int):
    """Channel gates from the map's global average: a learned reweighting of what the block found."""
    channels = x.shape[-1]
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Dense(max(4, channels // ratio), activation="relu")(gate)
    gate = layers.Dense(channels, activation="sigmoid")(gate)
    return layers.Multiply()([x, gate])


def _basic_block(x, filters: int, stride: int, se_ratio: int):
    y = _conv_bn_relu(x, filters, stride=stride)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    if se_ratio:
        y = _squeeze_excite(y, se_ratio)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    return layers.ReLU()(layers.Add()([shortcut, y]))


@architecture("resnet_se")
def resnet_se(cfg: ResNetSEConfig) -> keras.Model:
    """ResNet basic blocks with squeeze-and-excitation, sized for 48x48: a full-resolution 3x3 stem, then
    stages that halve the resolution; the shortcuts let deeper stacks train in a short budget."""
    inputs, x = _pixels_in()
    x = _conv_bn_relu(x, cfg.filters[0])
    for stage, filters in enumerate(cfg.filters):
        for i in range(cfg.blocks[stage]):
            x = _basic_block(x, filters, stride=2 if stage and not i else 1, se_ratio=cfg.se_ratio)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(cfg.dropout)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name="scores")(x)
    return keras.Model(inputs, outputs, name="resnet_se")


def build_model(cfg: ModelConfig) -> keras.Model:
    """The configured architecture, as it trains."""
    return ARCHITECTURES[cfg.name](cfg)


def with_views(core: keras.Model, views: ViewsConfig) -> keras.Model:
    """The exported model: `core` averaged over the configured test-time views (just `core` when none).

    Views: the face, with `zoom` its central `zoom`-pixel crop scaled to 48x48, and with `flip` the mirror
    image of each. Applied after training, so it costs nothing to train (flip and zoom augmentation
    already taught the network these views) and multiplies the MACs per face by the number of views.
    """
    if not views.flip and not views.zoom:
        return core
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    faces = [inputs] + ([CenterZoom(views.zoom, name="tta_zoom")(inputs)] if views.zoom else [])
    if views.flip:
        faces += [HorizontalFlip(name=f"tta_flip_{i}")(face) for i, face in enumerate(faces)]
    scores = layers.Average(name="tta_mean")([core(face) for face in faces])
    return keras.Model(inputs, scores, name=f"{core.name}_tta")


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One network scoring raw pixels with the members' averaged scores (each member keeps its own
    preprocessing); the export's test-time views then wrap all of them at once."""
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    renamed = [keras.Model(m.input, m.output, name=f"member{i}") for i, m in enumerate(members, 1)]
    scores = layers.Average(name="members_mean")([m(inputs) for m in renamed])
    return keras.Model(inputs, scores, name=f"{members[0].name}_x{len(members)}")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates for one face, counted from the layers (conv, separable conv, dense).

    Per-face latency on a CPU is bound by MACs, so this is the number to compare models by.
    """
    macs = 0
    for layer in _all_layers(model):
        if isinstance(layer, layers.SeparableConv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            macs += h * w * c_in * kh * kw + h * w * c_in * c_out
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)


def _all_layers(model: keras.Model) -> list[layers.Layer]:
    """Layers of nested models too, once per call of the nested model (the TTA wrapper calls its core twice)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _all_layers(layer) * max(1, len(layer._inbound_nodes))
        else:
            found.append(layer)
    return found
