"""Build the embedded sample dataset: raw JPEG bytes of a few CIFAR-10 images in one .npz.

    python -m dprime_tf.data.make_sample --source=/path/to/cifar10_jpeg/train \
        --per_class=300 --output=dprime_tf/data/cifar10_sample.npz

`source` holds one sub-folder per class (sorted folder names give the labels;
for CIFAR-10 that is the standard label order). The first `per_class` files of
each class, in sorted file-name order, are taken. They are stored interleaved
(image 0 of every class, then image 1 of every class, ...), so any prefix of the
file is class-balanced; `images.py` holds out the last 10% of each class (which,
interleaved, is the last 10% of the file) as the `test` split.

Arrays in the file (no pickled objects):
    jpeg        uint8 (total_bytes,)  all JPEG files concatenated
    offsets     int64 (N + 1,)        image i is jpeg[offsets[i]:offsets[i + 1]]
    labels      int32 (N,)
    class_names str   (num_classes,)
    files       str   (N,)            "<class>/<file name>" in the source, for provenance

The bytes are copied unchanged (no re-encoding), so decoding the sample gives
exactly the pixels of the source files. This script does not need TensorFlow.
"""

import argparse
import os
import sys

import numpy as np

from dprime_tf.atomic import atomic_savez

_JPEG_EXTENSIONS = (".jpg", ".jpeg")


def collect(source, per_class):
    """Returns (blobs, labels, class_names, files) in interleaved class order."""
    class_names = sorted(
        d for d in os.listdir(source)
        if not d.startswith(".") and os.path.isdir(os.path.join(source, d)))
    if not class_names:
        raise SystemExit(f"error: {source} has no class sub-folders")
    per_class_files = []
    for name in class_names:
        folder = os.path.join(source, name)
        files = sorted(f for f in os.listdir(folder)
                       if f.lower().endswith(_JPEG_EXTENSIONS) and not f.startswith("."))
        if len(files) < per_class:
            raise SystemExit(f"error: {folder} has {len(files)} JPEG files, fewer than "
                             f"--per_class={per_class}")
        per_class_files.append(files[:per_class])
    blobs, labels, names = [], [], []
    for j in range(per_class):
        for label, class_name in enumerate(class_names):
            file_name = per_class_files[label][j]
            with open(os.path.join(source, class_name, file_name), "rb") as f:
                blob = f.read()
            if blob[:2] != b"\xff\xd8":
                raise SystemExit(f"error: {class_name}/{file_name} is not a JPEG file")
            blobs.append(blob)
            labels.append(label)
            names.append(f"{class_name}/{file_name}")
    return blobs, labels, class_names, names


def write_npz(output, blobs, labels, class_names, files):
    """Writes the sample atomically (dprime_tf.atomic: readable like any file open() creates)."""
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    atomic_savez(
        output,
        jpeg=np.frombuffer(b"".join(blobs), np.uint8),
        offsets=offsets,
        labels=np.asarray(labels, np.int32),
        class_names=np.asarray(class_names, dtype=str),
        files=np.asarray(files, dtype=str))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="folder with one sub-folder of JPEG images per class")
    parser.add_argument("--per_class", type=int, default=300)
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "cifar10_sample.npz"))
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per_class must be >= 1")
    blobs, labels, class_names, files = collect(args.source, args.per_class)
    write_npz(args.output, blobs, labels, class_names, files)
    print(f"wrote {args.output}: {len(blobs)} images, {len(class_names)} classes, "
          f"{os.path.getsize(args.output)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
