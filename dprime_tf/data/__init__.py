"""Data layers. Import the module you need, e.g. `from dprime_tf.data import images`.

The embedded CIFAR-10 sample (`cifar10_sample.npz`, built by `make_sample.py`) is
package data and must ship with the package.
"""


def unknown_dataset(spec) -> str:
    """The one-line error for a --dataset no search space knows (no TensorFlow needed)."""
    return (f"unknown --dataset={spec}: use sample, cifar10, cifar100 or folder:<path> (one sub-folder of images "
            "per class) for images; ptb_sample, ptb or textdir:<path> for text")
