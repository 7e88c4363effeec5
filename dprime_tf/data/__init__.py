"""Data layers. Import the module you need, e.g. `from dprime_tf.data import images`.

The embedded CIFAR-10 sample (`cifar10_sample.npz`, built by `make_sample.py`) is
package data and must ship with the package.
"""
