"""Per-dataset normalization statistics travel with what a run produces: the
search summary, the final network's config (model.keras) and the export's
serving graph. Tiny networks only (3 cells, 4 channels)."""

import json
import types
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from dprime_tf.data import images as I
from dprime_tf.spaces.cnn.genotype import DARTS_V2
from dprime_tf.spaces.cnn.network import NetworkCIFAR, NetworkImageNet, build_cifar_network
from export import pipeline, saved_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

MEAN, STD = (0.61, 0.32, 0.05), (0.11, 0.42, 0.9)


def tiny(**kwargs):
    model = build_cifar_network(DARTS_V2, init_channels=4, layers=3, num_classes=5, auxiliary=False, **kwargs)
    for w in model.weights:  # non-trivial BN statistics
        if "moving_mean" in w.path:
            w.assign(tf.constant(np.random.default_rng(1).normal(0, 0.1, w.shape), tf.float32))
    return model


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """A tiny network recording MEAN/STD, saved as model.keras and loaded back."""
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model = tiny(input_mean=MEAN, input_std=STD)
    model.save(path)
    return model, path


def test_config_round_trip(custom):
    model, _ = custom
    assert model.input_mean == MEAN and model.input_std == STD
    config = model.get_config()
    assert config["input_mean"] == list(MEAN) and config["input_std"] == list(STD)
    again = NetworkCIFAR.from_config(json.loads(json.dumps(config)))
    assert again.input_mean == MEAN and again.input_std == STD
    default = NetworkImageNet(DARTS_V2, 8, 3, 5, auxiliary=False)
    assert default.input_mean == I.CIFAR10_MEAN and default.input_std == I.CIFAR10_STD
    with pytest.raises(ValueError, match="3 values"):
        NetworkCIFAR(DARTS_V2, 4, 3, 5, input_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        NetworkCIFAR(DARTS_V2, 4, 3, 5, input_std=(0.5, 0.0, 0.5))


def test_model_keras_round_trip(custom):
    model, path = custom
    loaded = saved_model.load_keras_model(path)
    assert isinstance(loaded, NetworkCIFAR)
    assert loaded.input_mean == MEAN and loaded.input_std == STD
    assert I.model_statistics(loaded) == (MEAN, STD)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)  # call() unchanged


def test_old_model_keras_without_statistics_loads(custom, tmp_path):
    """A model.keras written before the statistics were recorded: CIFAR-10's."""
    _, path = custom
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["input_mean"], config["config"]["input_std"]
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = saved_model.load_keras_model(str(old))
    assert loaded.input_mean == I.CIFAR10_MEAN and loaded.input_std == I.CIFAR10_STD
    assert saved_model.model_statistics(loaded) == (I.CIFAR10_MEAN, I.CIFAR10_STD)
    assert I.model_statistics(object()) == (I.CIFAR10_MEAN, I.CIFAR10_STD)


def test_export_normalizes_with_the_models_statistics(custom, tmp_path):
    _, path = custom
    model = saved_model.load_keras_model(path)
    export_dir = str(tmp_path / "sm")
    saved_model.save(model, export_dir, (32, 32))
    run = saved_model.load(export_dir)
    pixels = pipeline.random_images(6, (32, 32), seed=3)
    expected = np.asarray(model(I.normalize(pixels, MEAN, STD), training=False))
    np.testing.assert_allclose(run(pixels)["logits"], expected, rtol=0, atol=1e-4)
    cifar = np.asarray(model(I.normalize(pixels), training=False))  # the old, fixed preprocessing
    assert np.abs(cifar - expected).max() > 1e-2
    parity, _ = pipeline.check_parity(model, run, None, pixels, tolerance=1e-4)
    assert parity.ok and parity.keras_vs_saved_model <= 1e-4


def test_search_summary_records_the_statistics():
    from dprime_tf import spaces
    cfg = types.SimpleNamespace(dataset="sample", data_dir=None, image_size=8, split="half", schedfreq=10,
                                batch_size=64, seed=0)
    data = spaces.get("cnn").load_search_data(cfg, replicas=1)
    assert data.summary["normalization"] == {"mean": list(I.CIFAR10_MEAN), "std": list(I.CIFAR10_STD)}
    json.dumps(data.summary)  # summary.json material
