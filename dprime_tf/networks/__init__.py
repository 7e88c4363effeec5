"""Final (evaluation) networks built from a genotype."""

from dprime_tf.networks.cnn import (NetworkCIFAR, NetworkImageNet, build_cifar_network, build_imagenet_network,
                                    count_parameters)

__all__ = ["NetworkCIFAR", "NetworkImageNet", "build_cifar_network", "build_imagenet_network", "count_parameters"]
