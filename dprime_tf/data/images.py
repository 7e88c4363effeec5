"""Image datasets for search and training: loading, normalization, augmentation, streams.

Dataset specs (the `--dataset` flag):
  sample         the embedded default: 3,000 real CIFAR-10 training images packed
                 in `cifar10_sample.npz` next to this file (built by
                 `make_sample.py`): the first 300 files (sorted names 0000.jpg ..
                 0299.jpg) of each class, stored interleaved by class. The last
                 10% of every class (files 0270..0299, i.e. the last 300 images of
                 the file) are the held-out `test` split that search and training
                 never see; `train` is the other 2,700.
  cifar10        CIFAR-10 / CIFAR-100 through tensorflow-datasets, from `data_dir`
  cifar100       (downloaded there when `download=True` and online). `train` and
                 `test` are the tfds splits.
  folder:<path>  a user's own images: one sub-folder per class (classes sorted by
                 folder name), files .jpg/.jpeg/.png/.bmp/.gif directly inside.
                 The last 10% (floor) of each class's files, in sorted file-name
                 order, are the `test` split; the rest are `train`.

Normalization: x/255 minus a per-channel mean, divided by a per-channel std, with
statistics carried by the ImageData (`mean`, `std`): CIFAR-10's for sample and
cifar10, CIFAR-100's for cifar100 (the values of the DARTS code), and for folder:
those of all pixels of the folder's train split at the loaded image size (also
when the test split is loaded, so evaluation sees the training preprocessing).

Everything is decoded once into memory as uint8 (N, H, W, 3) + int32 labels (fine
for CIFAR-sized data; a folder of hundreds of thousands of images should be
converted to a tensorflow-datasets copy first, as decoding it here takes time and
N*H*W*3 bytes of memory).

Order: sample and folder images are interleaved by class (spread evenly when the
classes have different sizes), so that the DARTS split by position (the first
part trains weights, the rest the architecture, see `split_indices`) is
class-balanced. tfds CIFAR keeps the tfds order, which is already mixed.
"""

import contextlib
import dataclasses
import fractions
import os
import socket
import sys
import tempfile
import urllib.request

import numpy as np
import tensorflow as tf

from dprime_tf.errors import UserError

# Per-channel statistics of x/255 over the training images, as in the DARTS code.
# A trained network records the ones it was trained with (NetworkCIFAR's
# input_mean/input_std), and the exporter puts them into the serving graph.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
MEAN, STD = CIFAR10_MEAN, CIFAR10_STD  # the default (models that do not record theirs)
MIN_STD = 1.0 / 255  # floor of a folder's channel std (a constant channel would divide by 0)

CROP_PADDING = 4
DEFAULT_IMAGE_SIZE = 32  # for folder: datasets when no image_size is given
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_sample.npz")
SPLITS = ("train", "test")

_TFDS = {  # spec -> (tfds name, display name, download host)
    "cifar10": ("cifar10", "CIFAR-10", "www.cs.toronto.edu"),
    "cifar100": ("cifar100", "CIFAR-100", "www.cs.toronto.edu"),
}
_STATISTICS = {"sample": (CIFAR10_MEAN, CIFAR10_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
               "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}
_ALTERNATIVES = ("pass --data_dir with a prepared tensorflow-datasets copy, or "
                 "--dataset=folder:<path> with one sub-folder per class, or --dataset=sample")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageData:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int32 (N,)
    class_names: tuple
    num_classes: int
    name: str
    mean: tuple = MEAN  # per-channel statistics of x/255 that `normalize` uses (see the module docstring)
    std: tuple = STD

    def __len__(self):
        return len(self.labels)

    @property
    def image_size(self):
        return tuple(self.images.shape[1:3])


def load_images(spec, data_dir=None, image_size=None, split="train", download=True):
    """Loads a dataset spec (see the module docstring) into an ImageData.

    image_size: None (native size; 32 for folder:), an int or (height, width);
    images of another size are resized (bilinear, antialiased). data_dir and
    download only matter for cifar10/cifar100: a set missing from data_dir is
    downloaded there if `download` and the host answers a quick probe (tfds
    itself retries an offline download for minutes). Raises UserError (one line)
    on bad input.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    size = _parse_size(image_size)
    text = str(spec).strip()
    key = text.lower()
    if key == "sample":
        data = _load_sample(split)
    elif key in _TFDS:
        data = _load_tfds(key, data_dir, split, download)
    elif key.startswith("folder:"):
        return _load_folder(text[len("folder:"):], size or (DEFAULT_IMAGE_SIZE,) * 2, split)
    else:
        from dprime_tf.data import unknown_dataset
        raise UserError(unknown_dataset(text))
    if size is not None and data.image_size != size:
        data = dataclasses.replace(data, images=_resize_batch(data.images, size))
    return data


def _parse_size(image_size):
    if image_size is None:
        return None
    size = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise UserError(f"bad image size {image_size!r}: give a positive int or (height, width)")
    return tuple(int(s) for s in size)


# ---------------------------------------------------------------- ordering


def _holdout(items):
    """(train, test) of one class's items in order: the last 10% (floor) are test."""
    n_test = len(items) // 10
    return items[:len(items) - n_test], items[len(items) - n_test:]


def _interleave(per_class):
    """[(label, item)] with each class spread evenly (round robin for equal sizes)."""
    keyed = [((j + 0.5) / len(items), label, item)
             for label, items in enumerate(per_class) for j, item in enumerate(items)]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [(label, item) for _, label, item in keyed]


# ---------------------------------------------------------------- sample


def _load_sample(split):
    if not os.path.isfile(SAMPLE_PATH):
        raise UserError(f"the embedded sample {SAMPLE_PATH} is missing: reinstall the package "
                        "or pass --dataset=folder:<path> / --dataset=cifar10")
    with np.load(SAMPLE_PATH, allow_pickle=False) as f:
        jpeg, offsets, labels = f["jpeg"], f["offsets"], f["labels"]
        class_names = tuple(str(c) for c in f["class_names"])
    per_class = [np.flatnonzero(labels == c).tolist() for c in range(len(class_names))]
    parts = [_holdout(p)[SPLITS.index(split)] for p in per_class]
    order = [i for _, i in _interleave(parts)]
    images = _decode_all([jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in order],
                         [f"{SAMPLE_PATH}[{i}]" for i in order])
    return ImageData(images, labels[order].astype(np.int32), class_names, len(class_names),
                     "sample", *_STATISTICS["sample"])


# ---------------------------------------------------------------- tfds


def _load_tfds(key, data_dir, split, download):
    tfds_name, display, host = _TFDS[key]
    where = f"--data_dir={data_dir}" if data_dir else "the default tensorflow-datasets folder"
    missing = f"{display} is not in {where}"
    try:
        import tensorflow_datasets as tfds
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if not builder.is_prepared():
            if not download:
                raise UserError(f"{missing} and downloading is off: {_ALTERNATIVES}")
            if not _reachable(host):
                raise UserError(f"{missing} and cannot be downloaded (offline?): {_ALTERNATIVES}")
            builder.download_and_prepare()
        dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        batches = list(tfds.as_numpy(dataset.batch(10000)))
        images = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        class_names = tuple(builder.info.features["label"].names)
    except UserError:
        raise
    except Exception as e:  # tfds raises many kinds; the user needs one line
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise UserError(f"{missing} and could not be loaded or downloaded ({reason[:200]}): "
                        f"{_ALTERNATIVES}") from None
    return ImageData(np.asarray(images, np.uint8), np.asarray(labels, np.int32), class_names,
                     len(class_names), key, *_STATISTICS[key])


def _reachable(host, port=443, timeout=5.0):
    """Quick connectivity probe: tfds retries a failing download for minutes."""
    if urllib.request.getproxies().get("https"):
        return True  # a proxy may reach what we cannot; let tfds try
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- folder


def _load_folder(path, size, split):
    """Decodes and resizes every image of the split once (see the module docstring)."""
    if not path:
        raise UserError("--dataset=folder: needs a path, e.g. --dataset=folder:/data/my_images")
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(root):
        raise UserError(f"--dataset=folder:{path}: no such folder {root}")
    if not os.path.isdir(root):
        raise UserError(f"--dataset=folder:{path}: {root} is not a folder")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    class_names = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not class_names:
        loose = sum(e.lower().endswith(IMAGE_EXTENSIONS) for e in entries)
        what = (f"has {loose} images but no class sub-folders" if loose
                else "is empty" if not entries else "has no class sub-folders")
        raise UserError(f"dataset folder {root} {what}: put each class's images in its "
                        "own sub-folder (folder/<class>/<image>)")
    if len(class_names) < 2:
        raise UserError(f"dataset folder {root} has one class sub-folder ({class_names[0]}): "
                        "classification needs at least two")
    per_class = []
    for name in class_names:
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder)
                       if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(folder, f)))
        if not files:
            raise UserError(f"class folder {folder} has no images "
                            f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files)")
        per_class.append([os.path.join(folder, f) for f in files])
    parts = [_holdout(files)[SPLITS.index(split)] for files in per_class]
    ordered = _interleave(parts)
    if not ordered:
        raise UserError(f"dataset folder {root} has too few images for a held-out test split "
                        "(the last 10% of each class; needs at least 10 images in a class)")
    files = [file for _, file in ordered]
    images = _decode_all([_read(file) for file in files], files, size)
    labels = np.asarray([label for label, _ in ordered], np.int32)
    if split == "train":
        train_images = images
    else:  # the statistics are always the train split's (decoded for them only)
        train_files = [file for files in per_class for file in _holdout(files)[0]]
        train_images = _decode_all([_read(file) for file in train_files], train_files, size)
    mean, std = channel_statistics(train_images)
    return ImageData(images, labels, tuple(class_names), len(class_names), f"folder:{root}", mean, std)


def channel_statistics(images, chunk=4096):
    """(mean, std): per-channel mean and (population) std of x/255 over all pixels of
    uint8 (N, H, W, 3) images, computed in float64 in two passes; std >= MIN_STD."""
    images = np.asarray(images)
    count = images.size // images.shape[-1]
    total = np.zeros(images.shape[-1], np.float64)
    for i in range(0, len(images), chunk):
        total += images[i:i + chunk].reshape(-1, images.shape[-1]).sum(axis=0, dtype=np.float64)
    mean = total / count / 255.0
    squares = np.zeros_like(total)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        squares += np.square(x - mean).sum(axis=0)
    std = np.maximum(np.sqrt(squares / count), MIN_STD)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


MAX_IMAGE_BYTES = 64 << 20  # one source image file
MAX_IMAGE_PIXELS = 1 << 26  # one source image (64 megapixels, e.g. 8192 x 8192): decoded, 192 MiB


def _read(file):
    try:
        if os.path.getsize(file) > MAX_IMAGE_BYTES:
            raise UserError(f"image {file} is larger than {MAX_IMAGE_BYTES >> 20} MiB: resize it first")
        with open(file, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise UserError(f"cannot read image {file}: {e.strerror}") from None
    dims = image_dimensions(blob)
    if dims and dims[0] * dims[1] > MAX_IMAGE_PIXELS:
        raise UserError(f"image {file} is {dims[0]}x{dims[1]} pixels, more than {MAX_IMAGE_PIXELS >> 20} "
                        "megapixels: resize it first")
    return blob


def image_dimensions(blob: bytes):
    """(width, height) from a PNG, JPEG, GIF or BMP header without decoding; None if unknown."""
    import struct
    try:
        if blob[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", blob[16:24])
        if blob[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", blob[6:10])
        if blob[:2] == b"BM":
            w, h = struct.unpack("<ii", blob[18:26])
            return abs(w), abs(h)
        if blob[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(blob):
                if blob[i] != 0xFF:
                    return None
                marker = blob[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                length = struct.unpack(">H", blob[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", blob[i + 5:i + 9])
                    return w, h
                i += 2 + length
    except struct.error:
        return None
    return None


def jpeg_truncated(blob: bytes) -> bool:
    """Whether a JPEG ends before its end-of-image marker (a cut-off download or copy)."""
    if blob[:2] != b"\xff\xd8":
        return False
    i, n = 2, len(blob)
    while True:
        start = i
        while i < n and blob[i] == 0xFF:  # a marker, after any fill bytes
            i += 1
        if i >= n:
            return True
        if i == start:
            return False  # no marker where one belongs: corrupt, not cut off
        marker, i = blob[i], i + 1
        if marker == 0xD9:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if i + 2 > n:
            return True
        i += (blob[i] << 8) | blob[i + 1]
        if marker == 0xDA:  # entropy-coded data: up to the next marker (FF 00 and restarts are data)
            while True:
                i = blob.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return True
                if blob[i + 1] == 0xFF:
                    i += 1
                elif blob[i + 1] == 0x00 or 0xD0 <= blob[i + 1] <= 0xD7:
                    i += 2
                else:
                    break


@contextlib.contextmanager
def _libjpeg_stderr_held():
    """libjpeg (inside TensorFlow's decoders) writes its warnings and errors straight to the
    process's stderr, e.g. "Corrupt JPEG data: premature end of data segment", whatever the
    log level. Holds fd 2 in a temporary file meanwhile: the text is written out afterwards,
    unless a bad file became a UserError (its one line says what libjpeg did)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
        held = tempfile.TemporaryFile()
    except OSError:  # no usable stderr: nothing to hold
        yield
        return
    replay = True
    try:
        os.dup2(held.fileno(), 2)
        yield
    except UserError:
        replay = False
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        with held:
            if replay:
                held.seek(0)
                text = held.read()
                while text:
                    text = text[os.write(2, text):]


def _decode_all(blobs, names, size=None):
    """Decodes encoded images in parallel with tf.data, resizing those not of `size`.

    On a failure, decodes one by one to name the bad file in a UserError (without
    libjpeg's own lines on stderr).
    """
    def decode(blob):
        image = tf.io.decode_image(blob, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        if size is None:
            return image
        same = tf.reduce_all(tf.shape(image)[:2] == tf.constant(size))
        return tf.cond(same, lambda: image, lambda: _resize(image, size))

    with _libjpeg_stderr_held():
        try:
            dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(blobs, tf.string))
                       .map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(1024))
            return np.concatenate([batch.numpy() for batch in dataset])
        except (tf.errors.OpError, ValueError):
            for name, blob in zip(names, blobs):
                try:
                    tf.io.decode_image(blob, channels=3, expand_animations=False)
                except (tf.errors.OpError, ValueError):
                    if jpeg_truncated(blob):
                        raise UserError(f"cannot decode image {name}: the JPEG is truncated (it ends before "
                                        "its end-of-image marker): copy it again or remove it") from None
                    raise UserError(f"cannot decode image {name}: not a valid "
                                    f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} file") from None
            raise  # not a problem of one file


def _resize(images, size):
    resized = tf.image.resize(images, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _resize_batch(images, size, chunk=1024):
    return np.concatenate([_resize(images[i:i + chunk], size).numpy()
                           for i in range(0, len(images), chunk)])


# ---------------------------------------------------------------- preprocessing


def normalize(images, mean=MEAN, std=STD):
    """uint8 images (any leading shape, channels last) -> float32 (x/255 - mean) / std.

    mean, std: per-channel statistics (3 floats each; default CIFAR-10's), e.g. a
    dataset's `data.mean`, `data.std` or a trained network's input_mean/input_std.
    """
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def model_statistics(model):
    """(mean, std) a trained network normalizes its inputs with: its input_mean and
    input_std (NetworkCIFAR/NetworkImageNet record them), else CIFAR-10's (a model
    saved before they were recorded, or one that does not say)."""
    mean, std = getattr(model, "input_mean", None), getattr(model, "input_std", None)
    if mean is None or std is None:
        return CIFAR10_MEAN, CIFAR10_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def random_crop_flip(image, seed):
    """Random crop of an (H, W, C) image padded by 4 zero pixels, then random h-flip.

    Padding is black (0 in pixel space), as torchvision's RandomCrop(padding=4).
    seed: int32/int64 shape [2]; the same seed gives the same result.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[CROP_PADDING, CROP_PADDING], [CROP_PADDING, CROP_PADDING], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def random_cutout(image, length, seed):
    """Zeroes a length x length square (clipped to the image) at a random centre.

    As DARTS' Cutout: centre uniform over all pixels, rows [cy - length//2,
    cy + length//2) clipped, applied to the normalized image (so 0 = mean colour).
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    centre = tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=tf.int32.max,
                                         dtype=tf.int32) % tf.stack([h, w])
    half = length // 2
    rows, cols = tf.range(h), tf.range(w)
    inside_r = (rows >= centre[0] - half) & (rows < centre[0] + half)
    inside_c = (cols >= centre[1] - half) & (cols < centre[1] + half)
    mask = tf.logical_not(inside_r[:, None] & inside_c[None, :])
    return image * tf.cast(mask, image.dtype)[:, :, None]


def augment_image(image, seed, cutout=0, mean=MEAN, std=STD):
    """uint8 (H, W, 3) -> normalized float32: crop + flip, normalize (with mean/std), then cutout."""
    crop_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x = normalize(random_crop_flip(image, crop_seed), mean, std)
    return random_cutout(x, cutout, cutout_seed) if cutout else x


# ---------------------------------------------------------------- splits and streams


def split_indices(num_examples, weight_portion):
    """(weight_idx, alpha_idx): the first floor(portion * N) positions, then the rest.

    As DARTS, a fixed split by position (no shuffle). The portion is read as a
    fraction (10/11 is exact), so floor() does not suffer from float rounding.
    """
    portion = fractions.Fraction(weight_portion).limit_denominator(10**6)
    n_weight = (portion.numerator * num_examples) // portion.denominator
    if not 0 < n_weight < num_examples:
        raise UserError(f"weight portion {weight_portion} of {num_examples} examples leaves "
                        "no examples for the weights or for the architecture")
    return np.arange(n_weight, dtype=np.int64), np.arange(n_weight, num_examples, dtype=np.int64)


def steps_per_pass(n, batch_size):
    """Batches in one pass of a stream over n examples (the remainder is dropped)."""
    return n // batch_size


def make_stream(data, indices, batch_size, seed, augment=True, cutout=0, start_batch=0):
    """Infinite dataset of (x float32 (B, H, W, 3) normalized, y int32 (B,)) batches.

    Normalized with the data's own statistics (data.mean, data.std).

    Pass p visits `indices` in the order stateless_shuffle(seed, p) and uses its
    first steps_per_pass(len(indices), B) * B elements: the n % B left over are
    dropped for that pass only (the next pass reshuffles them in). Augmentation of
    the element at position i of pass p is seeded by (seed, p * per_pass + i),
    a global example counter, so the stream is a pure function of (seed, batch
    number): start_batch=k yields exactly the batches k, k+1, ... of start_batch=0
    without decoding or augmenting the skipped ones (resume after a kill).
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    n = len(indices)
    batches_per_pass = steps_per_pass(n, batch_size)
    if batches_per_pass < 1:
        raise UserError(f"batch size {batch_size} is larger than the {n} examples of the "
                        "stream: use a smaller batch size or more data")
    per_pass = batches_per_pass * batch_size
    start_pass, offset = divmod(int(start_batch), batches_per_pass)
    images = tf.constant(data.images[indices])
    labels = tf.constant(data.labels[indices].astype(np.int32))
    seed = tf.constant(int(seed), tf.int64)

    def one_pass(p):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([seed, -1 - p]))[:per_pass]
        first = tf.cast(p == start_pass, tf.int64) * (offset * batch_size)
        counters = p * per_pass + tf.range(first, per_pass, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((order[first:], counters))

    def load(position, counter):
        image = tf.gather(images, position)
        if augment:
            x = augment_image(image, tf.stack([seed, counter]), cutout, data.mean, data.std)
        else:
            x = normalize(image, data.mean, data.std)
            if cutout:
                x = random_cutout(x, cutout, tf.stack([seed, counter]))
        return x, tf.gather(labels, position)

    options = tf.data.Options()
    options.deterministic = True
    return (tf.data.Dataset.counter(start_pass, dtype=tf.int64)
            .flat_map(one_pass)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(options))


def make_eval_dataset(data, batch_size, indices=None):
    """Finite dataset of (x, y) batches in order, keeping the last partial batch; x is
    normalized with the data's own statistics (data.mean, data.std)."""
    images, labels = data.images, data.labels.astype(np.int32)
    if indices is not None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        images, labels = images[indices], labels[indices]
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .batch(batch_size)
            .map(lambda x, y: (normalize(x, data.mean, data.std), y), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
