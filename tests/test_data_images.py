"""Tests of the image data layer (dprime_tf/data/images.py and the embedded sample)."""

import os
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dprime_tf
from dprime_tf.data import images as I
from dprime_tf.errors import UserError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
SHARED_TRAIN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "cifar10_jpeg", "train")


@pytest.fixture(scope="module")
def sample_train():
    return I.load_images("sample")


@pytest.fixture(scope="module")
def sample_test():
    return I.load_images("sample", split="test")


# ------------------------------------------------------------------ embedded sample


def test_sample_counts_shapes_classes(sample_train, sample_test):
    for data, n, per_class in ((sample_train, 2700, 270), (sample_test, 300, 30)):
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.labels.shape == (n,) and data.labels.dtype == np.int32
        assert data.class_names == CIFAR10_CLASSES and data.num_classes == 10
        assert np.bincount(data.labels, minlength=10).tolist() == [per_class] * 10
        assert data.image_size == (32, 32) and len(data) == n
        assert data.name == "sample"
    # interleaved by class: any prefix is balanced
    assert sample_train.labels[:20].tolist() == list(range(10)) * 2
    assert sample_train.images.std() > 30  # real pictures, not blank


def test_sample_file_is_package_data_and_small():
    package_dir = os.path.dirname(os.path.abspath(dprime_tf.__file__))
    assert os.path.dirname(I.SAMPLE_PATH) == os.path.join(package_dir, "data")
    assert os.path.isfile(I.SAMPLE_PATH)
    assert os.path.getsize(I.SAMPLE_PATH) < 4 * 1024 * 1024
    with open(I.__file__) as f:
        source = f.read()
    assert "shared" not in source  # never reads ../shared at run time
    with np.load(I.SAMPLE_PATH, allow_pickle=False) as f:
        assert set(f.files) == {"jpeg", "offsets", "labels", "class_names", "files"}
        assert len(f["labels"]) == 3000 and len(f["offsets"]) == 3001
        assert f["offsets"][-1] == len(f["jpeg"])
        files = [str(x) for x in f["files"]]
    # the first 300 files of each class, stored interleaved
    assert files[:11] == [f"{c}/0000.jpg" for c in CIFAR10_CLASSES] + ["airplane/0001.jpg"]
    assert files[-1] == "truck/0299.jpg"
    assert sorted(files) == sorted(f"{c}/{j:04d}.jpg" for c in CIFAR10_CLASSES for j in range(300))


def test_sample_test_split_is_last_30_files_of_each_class(sample_train, sample_test):
    with np.load(I.SAMPLE_PATH, allow_pickle=False) as f:
        jpeg, offsets, files = f["jpeg"], f["offsets"], [str(x) for x in f["files"]]
    expected_test = [f"{c}/{j:04d}.jpg" for j in range(270, 300) for c in CIFAR10_CLASSES]
    expected_train_head = [f"{c}/{j:04d}.jpg" for j in range(2) for c in CIFAR10_CLASSES]

    def decode(name):
        i = files.index(name)
        return tf.io.decode_jpeg(jpeg[offsets[i]:offsets[i + 1]].tobytes()).numpy()

    for k in (0, 1, 17, 299):
        np.testing.assert_array_equal(sample_test.images[k], decode(expected_test[k]))
    for k in (0, 13, 19):
        np.testing.assert_array_equal(sample_train.images[k], decode(expected_train_head[k]))
    # no test image appears in train
    train_keys = {im.tobytes() for im in sample_train.images}
    assert not any(im.tobytes() in train_keys for im in sample_test.images)


@pytest.mark.skipif(not os.path.isdir(SHARED_TRAIN), reason="source images not available")
def test_sample_bytes_equal_source_files(sample_train):
    with np.load(I.SAMPLE_PATH, allow_pickle=False) as f:
        jpeg, offsets, files = f["jpeg"], f["offsets"], [str(x) for x in f["files"]]
    for i in (0, 1234, 2999):
        with open(os.path.join(SHARED_TRAIN, files[i]), "rb") as src:
            assert src.read() == jpeg[offsets[i]:offsets[i + 1]].tobytes()


def test_sample_resized_on_request():
    data = I.load_images("sample", split="test", image_size=16)
    assert data.images.shape == (300, 16, 16, 3) and data.images.dtype == np.uint8


# ------------------------------------------------------------------ folder datasets


def _save(path, array, fmt):
    Image.fromarray(array).save(path, format=fmt)


def _solid(h, w, rgb):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()


@pytest.fixture
def image_folder(tmp_path):
    """b_dogs: 12 PNGs of varied sizes (value 10*i); a_cats: 4 mixed-format; c_owls: 2."""
    root = tmp_path / "imgs"
    for d in ("b_dogs", "a_cats", "c_owls"):
        (root / d).mkdir(parents=True)
    for i in range(12):
        _save(root / "b_dogs" / f"{i:02d}.png", _solid(20 + i, 40 - i, (10 * i, 0, 255)), "PNG")
    _save(root / "a_cats" / "0.jpg", _solid(16, 16, (255, 255, 255)), "JPEG")
    _save(root / "a_cats" / "1.bmp", _solid(50, 30, (0, 200, 0)), "BMP")
    Image.fromarray(_solid(10, 12, (0, 0, 0))[:, :, 0]).save(root / "a_cats" / "2.PNG")  # gray
    Image.fromarray(np.zeros((9, 9), np.uint8)).convert("P").save(root / "a_cats" / "3.gif")
    rgba = np.concatenate([_solid(8, 8, (1, 2, 3)), np.full((8, 8, 1), 7, np.uint8)], axis=-1)
    _save(root / "c_owls" / "x.png", rgba, "PNG")
    _save(root / "c_owls" / "y.jpeg", _solid(33, 17, (128, 128, 128)), "JPEG")
    (root / "c_owls" / "notes.txt").write_text("not an image; ignored")
    (root / ".hidden").mkdir()
    return root


def test_folder_loads_resizes_and_orders(image_folder):
    data = I.load_images(f"folder:{image_folder}", image_size=8)
    assert data.class_names == ("a_cats", "b_dogs", "c_owls") and data.num_classes == 3
    assert data.images.shape == (4 + 11 + 2, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.name == f"folder:{image_folder}"
    # keys (j + 0.5) / n per class, merged: hand-computed for sizes a=4, b=11 (train), c=2
    a, b, c = 0, 1, 2
    assert data.labels.tolist() == [b, a, b, b, c, b, a, b, b, b, a, b, c, b, b, a, b]
    dogs = data.images[data.labels == b]
    # solid colours survive the resize exactly; b_dogs keeps files 00..10 in order
    np.testing.assert_array_equal(dogs[:, :, :, 0], np.arange(0, 110, 10)[:, None, None]
                                  * np.ones((1, 8, 8)))
    assert (dogs[:, :, :, 2] == 255).all()
    cats = data.images[data.labels == a]
    np.testing.assert_allclose(cats[0], 255, atol=2)  # JPEG white
    np.testing.assert_array_equal(cats[1], _solid(8, 8, (0, 200, 0)))  # BMP
    np.testing.assert_array_equal(cats[2], 0)  # grayscale -> 3 channels
    np.testing.assert_array_equal(cats[3], 0)  # GIF
    owls = data.images[data.labels == c]
    np.testing.assert_array_equal(owls[0], _solid(8, 8, (1, 2, 3)))  # RGBA: alpha dropped


def test_folder_test_split_and_default_size(image_folder):
    test = I.load_images(f"folder:{image_folder}", split="test")
    # only b_dogs has >= 10 images: its last file (11.png) is held out
    assert test.images.shape == (1, 32, 32, 3)
    assert test.labels.tolist() == [1] and test.class_names == ("a_cats", "b_dogs", "c_owls")
    assert (test.images[..., 0] == 110).all()


def test_folder_resize_is_antialiased_bilinear(tmp_path):
    # 1-pixel stripes, 3x downscale: plain bilinear samples single pixels (0 / 255
    # alternating); the antialiased filter averages 5 pixels: 4/9 or 5/9 of 255.
    stripes = np.zeros((33, 33, 3), np.uint8)
    stripes[:, ::2] = 255
    for d in ("p", "q"):
        (tmp_path / d).mkdir()
        _save(tmp_path / d / "s.png", stripes, "PNG")
    data = I.load_images(f"folder:{tmp_path}", image_size=(11, 11))
    assert data.images.shape == (2, 11, 11, 3)
    interior = data.images[:, 1:-1, 1:-1].astype(int)
    assert set(np.unique(interior)) <= {113, 142}
    assert (data.images[0, :, :, 0] == data.images[0, :1, :, 0]).all()  # rows all alike


# ------------------------------------------------------------------ errors


def _error(spec, **kwargs):
    with pytest.raises(UserError) as info:
        I.load_images(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_error_missing_folder(tmp_path):
    assert f"no such folder {tmp_path / 'nope'}" in _error(f"folder:{tmp_path / 'nope'}")


def test_error_empty_folder_and_no_class_folders(tmp_path):
    assert "is empty" in _error(f"folder:{tmp_path}")
    _save(tmp_path / "a.png", _solid(4, 4, (1, 1, 1)), "PNG")
    message = _error(f"folder:{tmp_path}")
    assert "1 images but no class sub-folders" in message and str(tmp_path) in message


def test_error_single_class(tmp_path):
    (tmp_path / "only").mkdir()
    _save(tmp_path / "only" / "a.png", _solid(4, 4, (1, 1, 1)), "PNG")
    assert "at least two" in _error(f"folder:{tmp_path}")


def test_error_empty_class_folder(image_folder):
    (image_folder / "d_empty").mkdir()
    (image_folder / "d_empty" / "readme.txt").write_text("x")
    message = _error(f"folder:{image_folder}")
    assert f"class folder {image_folder / 'd_empty'} has no images" in message


def test_error_corrupt_image_names_file(image_folder):
    bad = image_folder / "a_cats" / "1b.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    assert f"cannot decode image {bad}" in _error(f"folder:{image_folder}")
    bad.write_bytes(b"")
    assert f"cannot decode image {bad}" in _error(f"folder:{image_folder}")


def test_error_unknown_spec_and_split():
    message = _error("imagenet")
    assert "unknown --dataset=imagenet" in message and "folder:<path>" in message
    assert "split" in _error("sample", split="validation")
    assert "image size" in _error("sample", image_size=0)
    assert "needs a path" in _error("folder:")


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_error_cifar_offline_is_fast_and_one_line(tmp_path, offline):
    start = time.monotonic()
    message = _error("cifar10", data_dir=str(tmp_path))
    assert message.startswith(f"CIFAR-10 is not in --data_dir={tmp_path} and cannot be "
                              "downloaded (offline?)")
    assert "--dataset=folder:<path>" in message and "--dataset=sample" in message
    message = _error("cifar100", data_dir=str(tmp_path), download=False)
    assert message.startswith(f"CIFAR-100 is not in --data_dir={tmp_path} and downloading is off")
    assert time.monotonic() - start < 20
    assert not (tmp_path / "downloads").exists()


def test_error_tfds_failure_is_wrapped(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def fail(self, *args, **kwargs):
        raise RuntimeError("disk exploded\nand a long traceback follows")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    monkeypatch.setattr(I, "_reachable", lambda host: True)
    message = _error("cifar10", data_dir=str(tmp_path))
    assert "(RuntimeError: disk exploded)" in message and "--dataset=sample" in message


def test_cifar_loads_through_tfds_when_prepared(tmp_path, monkeypatch, offline):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=12):  # random data shaped like the real set
        data = I.load_images("cifar10", data_dir=str(tmp_path), split="test")
        small = I.load_images("cifar100", data_dir=str(tmp_path), image_size=16)
    assert data.images.shape == (12, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int32 and data.labels.max() < 10
    assert data.num_classes == len(data.class_names) == 10 and data.name == "cifar10"
    assert small.images.shape == (12, 16, 16, 3) and small.num_classes == 100
    assert data.mean == I.CIFAR10_MEAN and data.std == I.CIFAR10_STD
    assert small.mean == I.CIFAR100_MEAN == (0.5071, 0.4865, 0.4409)
    assert small.std == I.CIFAR100_STD == (0.2673, 0.2564, 0.2762)


# ------------------------------------------------------------------ splits, normalization


def test_split_indices_hand_computed():
    w, a = I.split_indices(2700, 0.5)
    assert (len(w), len(a)) == (1350, 1350)
    np.testing.assert_array_equal(w, np.arange(1350))
    np.testing.assert_array_equal(a, np.arange(1350, 2700))
    w, a = I.split_indices(2700, 10 / 11)  # 2454.54...
    assert (len(w), len(a), w[-1], a[0]) == (2454, 246, 2453, 2454)
    w, a = I.split_indices(50000, 1 - 1 / (1 + 10))  # 45454.54...
    assert (len(w), len(a)) == (45454, 4546)
    w, a = I.split_indices(11, 10 / 11)
    assert (len(w), len(a)) == (10, 1)
    w, a = I.split_indices(100, 0.57)  # 0.57 * 100 = 56.99999... in floating point
    assert len(w) == 57
    assert w.dtype == a.dtype == np.int64
    for bad in (0.0, 1.0, 0.001):
        with pytest.raises(UserError):
            I.split_indices(100, bad)


def test_normalize_matches_numpy():
    x = np.random.RandomState(0).randint(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    mean = np.array([0.49139968, 0.48215827, 0.44653124])  # the DARTS code's CIFAR-10 statistics
    std = np.array([0.24703233, 0.24348505, 0.26158768])
    expected = (x / 255.0 - mean) / std
    out = I.normalize(x)
    assert out.dtype == tf.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
    assert I.MEAN == I.CIFAR10_MEAN == tuple(mean) and I.STD == I.CIFAR10_STD == tuple(std)
    custom = I.normalize(x, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0)).numpy()
    np.testing.assert_allclose(custom, (x / 255.0 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0], rtol=0, atol=1e-5)


def test_sample_uses_cifar10_statistics(sample_train, sample_test):
    for data in (sample_train, sample_test):
        assert data.mean == (0.49139968, 0.48215827, 0.44653124)
        assert data.std == (0.24703233, 0.24348505, 0.26158768)


def test_folder_statistics_are_the_train_splits(tmp_path):
    """Per-channel mean/std of x/255 over every pixel of the train files, also for the test split."""
    rng = np.random.RandomState(4)
    counts = {"p": 12, "q": 10}  # held out: p's last 1 (11.png), q's last 1 (09.png)
    for d, n in counts.items():
        (tmp_path / d).mkdir()
        for i in range(n):  # lossless PNG noise, a different colour bias per class
            bias = np.array([40, 0, 90] if d == "p" else [0, 70, 10])
            pixels = np.clip(rng.randint(0, 166, (8, 8, 3)) + bias, 0, 255).astype(np.uint8)
            _save(tmp_path / d / f"{i:02d}.png", pixels, "PNG")
    train_files = [tmp_path / d / f"{i:02d}.png" for d, n in counts.items() for i in range(n - n // 10)]
    pixels = np.stack([np.asarray(Image.open(f)) for f in train_files]).reshape(-1, 3) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    train = I.load_images(f"folder:{tmp_path}", image_size=8)
    test = I.load_images(f"folder:{tmp_path}", image_size=8, split="test")
    assert len(train) == 20 and len(test) == 2
    for data in (train, test):
        assert isinstance(data.mean, tuple) and len(data.mean) == len(data.std) == 3
        np.testing.assert_allclose(data.mean, mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(data.std, std, rtol=0, atol=1e-12)
    held_out = test.images.reshape(-1, 3) / 255.0  # differs from the train split's
    assert np.abs(held_out.mean(axis=0) - mean).max() > 1e-3
    assert I.channel_statistics(np.zeros((2, 4, 4, 3), np.uint8)) == ((0.0,) * 3, (I.MIN_STD,) * 3)


def test_streams_normalize_with_the_datas_statistics():
    rng = np.random.RandomState(5)
    mean, std = (0.3, 0.5, 0.7), (0.1, 0.2, 0.4)
    data = I.ImageData(rng.randint(0, 256, (6, 8, 8, 3)).astype(np.uint8), np.zeros(6, np.int32), ("a",),
                       1, "rnd", mean, std)
    expected = (data.images / 255.0 - mean) / std
    (x, _), = [(x.numpy(), y) for x, y in I.make_eval_dataset(data, 6)]
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
    x, _ = _take(I.make_stream(data, np.arange(6), 6, seed=0, augment=False), 1)[0]
    np.testing.assert_allclose(np.sort(x.reshape(-1)), np.sort(expected.reshape(-1)), rtol=0, atol=1e-5)
    augmented, _ = _take(I.make_stream(data, np.arange(6), 6, seed=0), 1)[0]
    black = I.normalize(np.zeros(3, np.uint8), mean, std).numpy()  # the crop padding, in this normalization
    np.testing.assert_allclose(black, np.divide(np.negative(mean), std), atol=1e-6)
    assert np.isclose(augmented, black, atol=1e-5).all(axis=-1).any()


# ------------------------------------------------------------------ streams


def _indexed_data(n, size=8):
    """Image i is filled with the value i, so a batch tells which indices it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, size, size, 3)).copy()
    return I.ImageData(images, (np.arange(n) % 3).astype(np.int32), ("a", "b", "c"), 3, "idx")


def _decode_indices(x):
    """Inverse of normalize on channel 0, one index per image (centre pixel)."""
    x = np.asarray(x)
    h, w = x.shape[1] // 2, x.shape[2] // 2
    return np.rint((x[:, h, w, 0] * I.STD[0] + I.MEAN[0]) * 255).astype(int)


def _take(stream, k):
    return [(x.numpy(), y.numpy()) for x, y in stream.take(k)]


def test_each_pass_is_a_permutation():
    data = _indexed_data(30)
    indices = np.arange(10, 30)  # an "alpha" part: 20 examples, batch 4 -> 5 batches a pass
    batches = _take(I.make_stream(data, indices, 4, seed=7, augment=False), 15)
    for x, y in batches:
        assert x.shape == (4, 8, 8, 3) and x.dtype == np.float32 and y.dtype == np.int32
    seen = np.concatenate([_decode_indices(x) for x, _ in batches]).reshape(3, 20)
    for p in range(3):
        assert sorted(seen[p]) == list(range(10, 30))
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    labels = np.concatenate([y for _, y in batches]).reshape(3, 20)
    np.testing.assert_array_equal(labels, seen % 3)  # labels travel with their images
    again = _take(I.make_stream(data, indices, 4, seed=7, augment=False), 5)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in again]),
                                  np.concatenate([x for x, _ in batches[:5]]))
    other = _take(I.make_stream(data, indices, 4, seed=8, augment=False), 5)
    assert not np.array_equal(_decode_indices(np.concatenate([x for x, _ in other])), seen[0])


def test_remainder_is_dropped_per_pass():
    data = _indexed_data(20)  # batch 6: 3 batches (18 examples) a pass, 2 dropped
    assert I.steps_per_pass(20, 6) == 3
    batches = _take(I.make_stream(data, np.arange(20), 6, seed=1, augment=False), 3 * 8)
    seen = np.concatenate([_decode_indices(x) for x, _ in batches]).reshape(8, 18)
    dropped = set()
    for p in range(8):
        assert len(set(seen[p])) == 18  # no repeats inside a pass
        dropped |= set(range(20)) - set(seen[p])
    assert len(dropped) > 2  # a different remainder is dropped in different passes


@pytest.mark.parametrize("augment,cutout", [(True, 16), (False, 0)])
def test_start_batch_resumes_the_same_stream(augment, cutout):
    rng = np.random.RandomState(3)
    data = I.ImageData(rng.randint(0, 256, (22, 32, 32, 3)).astype(np.uint8),
                       rng.randint(0, 10, 22).astype(np.int32), tuple("abcdefghij"), 10, "rnd")
    indices = np.arange(2, 22)  # 20 examples, batch 6: 3 batches a pass
    reference = _take(I.make_stream(data, indices, 6, seed=11, augment=augment,
                                    cutout=cutout), 10)
    for k in (1, 2, 3, 7):  # 2 and 7 cross a pass boundary after one batch, 3 starts pass 1
        resumed = _take(I.make_stream(data, indices, 6, seed=11, augment=augment,
                                      cutout=cutout, start_batch=k), 3)
        for (x, y), (rx, ry) in zip(resumed, reference[k:k + 3]):
            np.testing.assert_array_equal(x, rx)
            np.testing.assert_array_equal(y, ry)


def test_augmentation_changes_images_keeps_shape():
    rng = np.random.RandomState(0)
    data = I.ImageData(rng.randint(1, 256, (16, 32, 32, 3)).astype(np.uint8),
                       np.zeros(16, np.int32), ("a",), 1, "rnd")
    plain = _take(I.make_stream(data, np.arange(16), 16, seed=5, augment=False), 1)[0]
    augmented = _take(I.make_stream(data, np.arange(16), 16, seed=5), 1)[0]
    assert augmented[0].shape == plain[0].shape == (16, 32, 32, 3)
    assert augmented[0].dtype == np.float32
    changed = [not np.array_equal(a, p) for a, p in zip(augmented[0], plain[0])]
    assert sum(changed) >= 12
    # crop padding is black: only shifted/flipped originals and zero pixels appear
    zero = I.normalize(np.zeros((1, 1, 3), np.uint8)).numpy()[0, 0]
    assert any(np.isclose(a, zero, atol=1e-6).all(axis=-1).any() for a in augmented[0])
    originals = plain[0]
    for a, p in zip(augmented[0], originals):
        black = np.isclose(a, zero, atol=1e-6).all(axis=-1)
        kept = a[~black]
        candidates = np.concatenate([p, p[:, ::-1]]).reshape(-1, 3)
        assert np.isin(kept[:, 0], candidates[:, 0]).all()


def test_random_crop_flip_is_a_shift_or_flip():
    image = np.arange(8 * 8 * 3, dtype=np.int64).reshape(8, 8, 3) % 251 + 1
    image = tf.constant(image.astype(np.uint8))
    outputs = set()
    for s in range(40):
        out = I.random_crop_flip(image, tf.constant([s, 0], tf.int64)).numpy().astype(int)
        padded = np.pad(image.numpy().astype(int), ((4, 4), (4, 4), (0, 0)))
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                   if np.array_equal(out, (padded[dy:dy + 8, dx:dx + 8] if not f
                                           else padded[dy:dy + 8, dx:dx + 8][:, ::-1]))]
        assert matches, "output is not a padded crop (optionally flipped)"
        outputs.add(out.tobytes())
        again = I.random_crop_flip(image, tf.constant([s, 0], tf.int64)).numpy()
        np.testing.assert_array_equal(out, again)
    assert len(outputs) > 20


def test_cutout_zeroes_a_clipped_square():
    image = tf.ones((32, 32, 3))
    sizes = set()
    for s in range(30):
        out = I.random_cutout(image, 16, tf.constant([s, 9], tf.int64)).numpy()
        zero = out == 0
        assert (zero == zero[:, :, :1]).all()  # all channels together
        rows = np.flatnonzero(zero[:, :, 0].any(axis=1))
        cols = np.flatnonzero(zero[:, :, 0].any(axis=0))
        assert len(rows) and len(cols)
        assert (rows == np.arange(rows[0], rows[-1] + 1)).all()
        assert (cols == np.arange(cols[0], cols[-1] + 1)).all()
        assert zero[:, :, 0].sum() == len(rows) * len(cols)  # a full rectangle
        assert len(rows) <= 16 and len(cols) <= 16
        # clipped only at the border
        assert len(rows) == 16 or rows[0] == 0 or rows[-1] == 31
        assert len(cols) == 16 or cols[0] == 0 or cols[-1] == 31
        assert (out[~zero] == 1).all()
        sizes.add((len(rows), len(cols)))
    assert (16, 16) in sizes and len(sizes) > 1


def test_stream_cutout_option():
    data = I.ImageData(np.full((8, 32, 32, 3), 200, np.uint8), np.zeros(8, np.int32), ("a",),
                       1, "c")
    x, _ = _take(I.make_stream(data, np.arange(8), 8, seed=0, augment=False, cutout=16), 1)[0]
    for image in x:
        zeros = (image == 0).all(axis=-1).sum()
        assert 64 <= zeros <= 256


def test_eval_dataset_in_order_with_remainder():
    data = _indexed_data(23)
    batches = [(x.numpy(), y.numpy()) for x, y in I.make_eval_dataset(data, 5)]
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([_decode_indices(x) for x, _ in batches]),
                                  np.arange(23))
    np.testing.assert_allclose(batches[0][0], I.normalize(data.images[:5]).numpy())
    sub = [(x.numpy(), y.numpy()) for x, y in
           I.make_eval_dataset(data, 4, indices=np.array([3, 1, 22]))]
    assert len(sub) == 1 and _decode_indices(sub[0][0]).tolist() == [3, 1, 22]
    assert sub[0][1].dtype == np.int32 and sub[0][1].tolist() == [0, 1, 1]


def test_stream_rejects_batch_larger_than_data():
    with pytest.raises(UserError):
        I.make_stream(_indexed_data(5), np.arange(5), 8, seed=0)
