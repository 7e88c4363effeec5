"""Final (evaluation) networks built from a genotype, of every search space.

Importing this module registers every network class with Keras, so
`keras.models.load_model` reads any model.keras a training run wrote.
"""

from dprime_tf.spaces.cnn.network import (NetworkCIFAR, NetworkImageNet, build_cifar_network,
                                          build_imagenet_network, count_parameters)
from dprime_tf.spaces.rnn.network import RNNModel

__all__ = ["NetworkCIFAR", "NetworkImageNet", "RNNModel", "build_cifar_network", "build_imagenet_network",
           "count_parameters"]
