"""DARTS's convolutional search space on images (CIFAR-10/100, an image folder,
or the embedded CIFAR-10 sample): normal and reduction cells, 8 ops."""

from __future__ import annotations

import os

from dprime_tf.errors import UserError
from dprime_tf.spaces.base import SearchData, SearchSpace


class CNNSpace(SearchSpace):
    name = "cnn"
    metric = "accuracy"
    genotype_kinds = ("normal", "reduce")

    train_defaults = {"dataset": "sample", "epochs": 600, "batch_size": 96, "learning_rate": 0.025,
                      "weight_decay": 3e-4, "grad_clip": 5.0, "seed": 0}

    def accepts_dataset(self, spec) -> bool:
        return True  # the image loader reports unknown names (see spaces.for_dataset)

    def check_dataset(self, spec):
        from dprime_tf.spaces.cnn.training import check_dataset_spec
        check_dataset_spec(spec)

    def genotype_class(self):
        from dprime_tf.spaces.cnn.genotype import Genotype
        return Genotype

    def train_checks(self, cfg):
        from dprime_tf.spaces.cnn.training import cnn_checks
        return cnn_checks(cfg)

    def train(self, cfg, genotype, strategy, flags_text, extra_callbacks):
        from dprime_tf.spaces.cnn.training import train_cnn
        return train_cnn(cfg, genotype, strategy, flags_text, extra_callbacks)

    def search_checks(self, cfg):
        return [
            (cfg.layers >= 3, "--layers must be >= 3 (the network has two reduction cells)"),
            (cfg.init_channels >= 2 and cfg.init_channels % 2 == 0, "--init_channels must be an even number >= 2"),
            (cfg.image_size is None or (cfg.image_size >= 8 and cfg.image_size % 4 == 0),
             "--image_size must be a multiple of 4, >= 8"),
        ]

    def load_search_data(self, cfg, replicas):
        from dprime_tf import prime
        from dprime_tf.data import images
        data = images.load_images(cfg.dataset, cfg.data_dir, cfg.image_size, split="train")
        weight_idx, alpha_idx = images.split_indices(len(data.labels), prime.weight_portion(cfg.split, cfg.schedfreq))
        per_pass = images.steps_per_pass(len(weight_idx), cfg.batch_size)
        if per_pass < 1 or images.steps_per_pass(len(alpha_idx), cfg.batch_size) < 1:
            raise UserError(f"--batch_size {cfg.batch_size} is larger than a split of the {len(data.labels)} "
                            f"images ({len(weight_idx)} weight / {len(alpha_idx)} alpha): use a smaller --batch_size")
        image_size = int(data.images.shape[1])
        return SearchData(
            name=data.name, steps_per_pass=per_pass,
            weight_stream=lambda start: images.make_stream(data, weight_idx, cfg.batch_size, cfg.seed,
                                                           start_batch=start),
            alpha_stream=lambda start: images.make_stream(data, alpha_idx, cfg.batch_size, cfg.seed + 1,
                                                          start_batch=start),
            eval_data=images.make_eval_dataset(data, cfg.batch_size, alpha_idx),
            network_args={"num_classes": data.num_classes, "image_size": image_size},
            summary={"dataset": data.name, "num_classes": data.num_classes, "image_size": image_size,
                     "weight_images": len(weight_idx), "alpha_images": len(alpha_idx),
                     "normalization": {"mean": list(data.mean), "std": list(data.std)}})

    def build_supernet(self, cfg, data):
        from dprime_tf.spaces.cnn.supernet import SearchNetwork
        return SearchNetwork(cfg.init_channels, cfg.layers, data.network_args["num_classes"],
                             image_size=data.network_args["image_size"], recompute=cfg.recompute)

    def draw_genotype(self, plot_dir, genotype):
        from dprime_tf import plots
        for kind in self.genotype_kinds:
            plots.plot_cell(os.path.join(plot_dir, f"cell_{kind}.png"), getattr(genotype, kind),
                            getattr(genotype, kind + "_concat"), f"{kind} cell")
