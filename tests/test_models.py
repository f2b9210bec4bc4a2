"""Architectures: registered by name, built from config, preprocessing inside the graph."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import MODEL_SCHEMAS, ViewsConfig
from pipeline.models import ARCHITECTURES, build_model, count_macs, ensemble, with_views
from tests.conftest import params

from .conftest import load_benchmark


def model_cfg(option: str, **changes: object):
    cfg = params(f"model={option}").model
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_every_schema_has_a_builder_and_back() -> None:
    assert set(ARCHITECTURES) == set(MODEL_SCHEMAS)


def test_seed_cnn_is_the_seed_architecture_exactly() -> None:
    model = build_model(model_cfg("seed_cnn"))
    assert model.count_params() == 4_232_199
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [128, 256, 512, 512]
    assert all(c.padding == "valid" and c.kernel_size == (3, 3) for c in convs)
    dense = [layer.units for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert dense == [512, 256, 7]
    dropout = [round(layer.rate, 2) for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert dropout == [0.4, 0.4, 0.4, 0.4, 0.4, 0.3]


def test_models_take_raw_pixels_and_return_probabilities() -> None:
    model = build_model(model_cfg("small_cnn"))
    assert model.layers[1].name == "rescale"  # normalisation is part of the graph
    out = model(np.full((2, 48, 48, 1), 255.0, np.float32), training=False).numpy()
    assert out.shape == (2, 7)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_no_views_export_the_network_itself() -> None:
    core = build_model(model_cfg("small_cnn"))
    assert with_views(core, ViewsConfig(flip=False, zoom=0)) is core


def test_tta_flip_averages_the_mirrored_face() -> None:
    cfg = model_cfg("small_cnn")
    model = with_views(build_model(cfg), ViewsConfig(flip=True, zoom=0))
    x = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 1)).astype(np.float32)
    a = model(x, training=False).numpy()
    b = model(x[:, :, ::-1], training=False).numpy()
    assert np.allclose(a, b, atol=1e-5)  # symmetric by construction
    plain = build_model(model_cfg("small_cnn"))
    assert count_macs(model) == 2 * count_macs(plain)


def test_tta_zoom_adds_the_zoomed_face_and_its_mirror() -> None:
    core = build_model(model_cfg("small_cnn"))
    model = with_views(core, ViewsConfig(flip=True, zoom=40))
    x = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 1)).astype(np.float32)
    zoomed = tf.image.resize(x[:, 4:44, 4:44], (48, 48)).numpy()
    views = [x, x[:, :, ::-1], zoomed, zoomed[:, :, ::-1]]
    expected = np.mean([core(v, training=False).numpy() for v in views], axis=0)
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, atol=1e-5)
    assert count_macs(model) == 4 * count_macs(core)


def test_mac_count_of_a_known_layer_stack() -> None:
    cfg = model_cfg("small_cnn", filters=[8], convs=[1], dense=0)
    # conv 48*48*8*3*3*1 + dense 8*7
    assert count_macs(build_model(cfg)) == 48 * 48 * 8 * 9 + 8 * 7


@pytest.mark.parametrize("separable", [False, True])
def test_convnet_options_build(separable: bool) -> None:
    cfg = model_cfg("small_cnn", separable=separable, stem_stride=2, dense=32, convs=[2, 2, 2])
    model = build_model(cfg)
    assert model.output_shape == (None, 7)


@pytest.mark.parametrize("se_ratio", [0, 8])
def test_resnet_se_takes_raw_pixels_and_gates_only_when_asked(se_ratio: int) -> None:
    model = build_model(model_cfg("resnet_se", se_ratio=se_ratio, filters=[8, 16], blocks=[1, 2]))
    out = model(np.full((2, 48, 48, 1), 255.0, np.float32), training=False).numpy()
    assert out.shape == (2, 7) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds.count("Add") == 3  # one shortcut per block
    assert kinds.count("Multiply") == (3 if se_ratio else 0)  # one SE gate per block
    # the second stage halves the resolution; its first block's shortcut is a strided 1x1 projection
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    projections = [conv for conv in convs if conv.kernel_size == (1, 1)]
    assert [(p.strides, p.filters) for p in projections] == [((2, 2), 16)]
    assert model.get_layer(index=-1).input.shape[-1] == 16


def test_resnet_se_preset_costs_about_what_fer_vgg_does() -> None:
    """Its conf/model/resnet_se.yaml is meant as fer_vgg's like-for-like rival under one time budget."""
    resnet, vgg = (count_macs(build_model(model_cfg(name))) for name in ("resnet_se", "fer_vgg"))
    assert 0.8 < resnet / vgg < 1.25


def test_the_views_report_scores_an_ensemble_whole_and_unwraps_only_a_views_wrapper() -> None:
    tta_views = load_benchmark("tta_views")
    core = build_model(model_cfg("small_cnn"))
    both = ensemble([core, build_model(model_cfg("small_cnn"))])
    assert tta_views.unwrap_views(both) is both  # not its first member
    assert tta_views.unwrap_views(core) is core
    assert tta_views.unwrap_views(with_views(core, ViewsConfig(flip=True, zoom=0))) is core
