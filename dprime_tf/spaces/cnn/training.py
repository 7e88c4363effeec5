"""Training a final CNN from a genotype (DARTS's train.py; SPEC section 7), the
image space's trainer behind `python -m dprime_tf.train` (dprime_tf.train_job).

The run directory:

    <run>/flags.txt        the flags used (resume re-reads them)
    <run>/genotype.json    the genotype trained (a copy)
    <run>/history.csv      one row per step: step, epoch, loss, accuracy, lr, drop_path_prob
    <run>/checkpoints/     every --checkpoint_every steps and at each epoch end
    <run>/tensorboard/     per-epoch loss/accuracy/val_*/lr/drop_path_prob; steps/: per step
    <run>/report.html      the run's page (curves, lr, cells; plots/), rewritten each epoch; epochs.json
    <run>/model.keras      the trained network (keras.models.load_model after
                           `import dprime_tf.networks`), written at the end
    <run>/summary.json     final validation accuracy/loss, parameters, wall time, the
                           normalization statistics (also in model.keras's config)

TensorFlow is imported inside `train_cnn` only (the command line checks its
input before TensorFlow starts).
"""

from __future__ import annotations

import os

from dprime_tf.errors import UserError

DATASETS = ("sample", "cifar10", "cifar100")


def check_dataset_spec(spec):
    """The dataset spec's syntax (and a folder's existence), without loading anything."""
    text = str(spec).strip()
    if text.lower() in DATASETS:
        return
    if text.lower().startswith("folder:"):
        path = text[len("folder:"):]
        if not path:
            raise UserError("--dataset=folder: needs a path, e.g. --dataset=folder:/data/my_images")
        root = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(root):
            raise UserError(f"--dataset=folder:{path}: no such folder {root}")
        return
    from dprime_tf.data import unknown_dataset
    raise UserError(unknown_dataset(text))


def _epoch_line(epoch, epochs, logs, seconds):
    parts = [f"epoch {epoch + 1}/{epochs}:",
             f"loss {logs.get('loss', float('nan')):.4f} acc {logs.get('accuracy', float('nan')):.4f}"]
    if "val_accuracy" in logs:
        parts.append(f"| val_loss {logs['val_loss']:.4f} val_acc {logs['val_accuracy']:.4f}")
    parts.append(f"| lr {logs.get('lr', float('nan')):.5f} drop_path {logs.get('drop_path_prob', 0.0):.3f}"
                 f" | {seconds:.0f}s")
    return " ".join(parts)


def cnn_checks(cfg) -> list[tuple[bool, str]]:
    """(condition, message) checks of the CNN training settings."""
    return [
        (cfg.init_channels >= 1, f"--init_channels must be >= 1, got {cfg.init_channels}"),
        (cfg.layers >= 3, f"--layers must be >= 3 (the network has two reduction cells), got {cfg.layers}"),
        (cfg.auxiliary_weight >= 0, f"--auxiliary_weight must be >= 0, got {cfg.auxiliary_weight}"),
        (0 <= cfg.drop_path_prob < 1, f"--drop_path_prob must be in [0, 1), got {cfg.drop_path_prob}"),
        (cfg.cutout >= 0, f"--cutout must be >= 0 (0 = off), got {cfg.cutout}"),
        (0 <= cfg.learning_rate_min <= cfg.learning_rate,
         f"--learning_rate_min must be in [0, --learning_rate], got {cfg.learning_rate_min}"),
        (0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}"),
        (cfg.grad_clip >= 0, f"--grad_clip must be >= 0 (0 = no clipping), got {cfg.grad_clip}"),
        (0 <= cfg.val_fraction < 1, f"--val_fraction must be in [0, 1) (0 = no validation), got {cfg.val_fraction}"),
        (cfg.image_size is None or cfg.image_size >= 8, f"--image_size must be >= 8, got {cfg.image_size}"),
    ]


def train_cnn(cfg, genotype, strategy=None, flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Trains (or resumes) a final CNN; returns the summary (also <run>/summary.json).

    `--precision` sets Keras' global dtype policy for the run (bf16:
    "mixed_bfloat16", fp16: "mixed_float16" with loss scaling; `--mixed_precision`
    is the older spelling of fp16); the previous policy is restored afterwards.
    """
    from dprime_tf import fast_paths

    with fast_paths.policy(cfg.precision):
        return _train(cfg, genotype, strategy, flags_text, extra_callbacks)


def _train(cfg, genotype, strategy, flags_text, extra_callbacks):
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from dprime_tf import fast_paths, report, runs, tb_steps
    from dprime_tf.guard import NonFiniteGuard
    from dprime_tf.data import images
    from dprime_tf.progress import ProgressBar
    from dprime_tf.spaces.cnn.network import build_cifar_network, count_parameters
    from dprime_tf.spaces.cnn.trainer import DropPathSchedule, FinalTrainer, TrainHistory, WallClock

    strategy = strategy or tf.distribute.get_strategy()
    started = time.time()
    # Everything that can fail on bad input happens before the run directory is
    # created, so a corrected command line can reuse the same --output_dir.
    data = images.load_images(cfg.dataset, cfg.data_dir, cfg.image_size, split="train")
    n = len(data.labels)
    if cfg.val_fraction > 0:
        train_idx, val_idx = images.split_indices(n, 1 - cfg.val_fraction)
    else:
        train_idx, val_idx = np.arange(n, dtype=np.int64), np.zeros([0], np.int64)
    per_pass = images.steps_per_pass(len(train_idx), cfg.batch_size)
    if per_pass < 1:
        raise UserError(f"--batch_size {cfg.batch_size} is larger than the {len(train_idx)} training images "
                        f"(of {n}, after holding out --val_fraction={cfg.val_fraction}): use a smaller --batch_size")
    steps_per_epoch = min(cfg.steps_per_epoch, per_pass) if cfg.steps_per_epoch else per_pass
    image_size = int(data.images.shape[1])

    if cfg.deterministic:
        runs.make_deterministic()
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        try:
            net = build_cifar_network(genotype, cfg.init_channels, cfg.layers, data.num_classes,
                                      auxiliary=cfg.auxiliary, image_size=image_size,
                                      input_mean=data.mean, input_std=data.std)
        except ValueError as e:  # e.g. the auxiliary head on an unsupported image size
            hint = " (--noauxiliary, or --image_size=32)" if cfg.auxiliary else ""
            raise UserError(f"cannot build the network: {str(e).splitlines()[0]}{hint}") from None
        trainer = FinalTrainer(net, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                               learning_rate=cfg.learning_rate, learning_rate_min=cfg.learning_rate_min,
                               momentum=cfg.momentum, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                               auxiliary_weight=cfg.auxiliary_weight if cfg.auxiliary else 0.0,
                               loss_scale=fast_paths.loss_scaling(cfg.precision), jit_compile=cfg.xla)
        wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall_time")
    # Every network weight, keyed by its position in `net.weights` (the same for
    # the same flags; Keras' auto-generated layer names are not, in a process that
    # built other layers first). `network=net` alone would miss most of them:
    # tf.train.Checkpoint does not see the layers Keras keeps in lists (the cells);
    # the trainable ones would still come back through the optimizer, but not
    # the batch-norm statistics.
    weights = {f"w{i:05d}": w for i, w in enumerate(net.weights)}

    run_dir = runs.prepare_run_dir(cfg.output_dir, cfg.resume)
    model_path = os.path.join(run_dir, "model.keras")
    if not cfg.resume:
        runs.atomic_write(os.path.join(run_dir, "genotype.json"), genotype.to_json())
    checkpoint = tf.train.Checkpoint(network_weights=weights, optimizer=trainer.optimizer, step=trainer.step,
                                     wall_time=wall_time)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    start_step = 0
    from dprime_tf import validation
    settings = validation.identity(cfg, validation.TRAIN_IDENTITY)
    checked = runs.resume_record(run_dir, "train", settings, [*weights.values(), *trainer.optimizer.variables],
                                 cfg.resume)
    if cfg.resume:
        runs.restore_latest(checkpoint, ckpt_dir, "resume with the run's own flags (they are re-read from its "
                            "flags.txt; do not change --init_channels, --layers, --auxiliary or the dataset)")
        runs.note_resumed(run_dir, "train", settings, checked)
        start_step = int(trainer.step.numpy())
        if cfg.verbose:
            print(f"resumed {run_dir} at step {start_step} (epoch {start_step // steps_per_epoch + 1})", flush=True)
    if flags_text is not None:  # after a successful restore: a failed resume keeps the run's flags
        runs.write_flags(run_dir, flags_text)
    total_steps = steps_per_epoch * cfg.epochs
    if start_step > total_steps or (start_step == total_steps and os.path.exists(model_path)
                                    and os.path.exists(os.path.join(run_dir, "summary.json"))):
        raise UserError(f"{run_dir} already finished its {start_step // steps_per_epoch} epochs; "
                        "raise --epochs to continue it")

    val_data = images.make_eval_dataset(data, cfg.batch_size, val_idx) if len(val_idx) else None
    epoch_clock = [time.monotonic()]
    last_logs = {}

    def on_epoch_end(epoch, logs):
        last_logs.clear()
        last_logs.update(logs)
        now = time.monotonic()
        if cfg.verbose:
            print(_epoch_line(epoch, cfg.epochs, logs, now - epoch_clock[0]), flush=True)
        epoch_clock[0] = now

    history_cb = TrainHistory(os.path.join(run_dir, "history.csv"), trainer, resume_step=start_step)
    callbacks = [WallClock(wall_time), DropPathSchedule(net, cfg.drop_path_prob, cfg.epochs), history_cb,
                 NonFiniteGuard(("loss",), trainer.step, advice=": lower --learning_rate, then --resume"),
                 runs.StepCheckpoint(manager, trainer.step, cfg.checkpoint_every),
                 runs.EpochSummary(on_epoch_end),
                 keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch",
                                             write_graph=False),
                 tb_steps.for_cnn_training(run_dir, trainer, net, genotype),  # per-step TensorBoard scalars
                 report.report_callback(run_dir, "train", trainer.step),  # report.html at each epoch end
                 *extra_callbacks]
    if cfg.verbose == 1:  # plain lines when stdout is not a terminal (Keras' bar writes ANSI escapes)
        callbacks.append(ProgressBar(("loss", "accuracy", "lr"), steps_per_epoch, cfg.epochs))

    runs.fit_run(trainer, lambda step: images.make_stream(data, train_idx, cfg.batch_size, cfg.seed, augment=True,
                                                        cutout=cfg.cutout, start_batch=step),
                 trainer.step, start_step, steps_per_epoch, cfg.epochs, callbacks, closing=[history_cb],
                 shuffle=False, validation_data=val_data, verbose=2 if cfg.verbose == 2 else 0)

    # The final validation numbers: the last epoch's, or (nothing left to train) measured.
    if val_data is not None and "val_accuracy" not in last_logs:
        measured = trainer.evaluate(val_data, verbose=0, return_dict=True)
        last_logs.update(val_loss=measured["loss"], val_accuracy=measured["accuracy"])

    runs.save_model(net, model_path)

    def number(key):
        return float(last_logs[key]) if key in last_logs else None

    # The last epoch's training loss/accuracy from history.csv (the progress bar's
    # running means cover only the steps of this process after a resume).
    history = runs.read_history(os.path.join(run_dir, "history.csv"))
    if history:
        last_epoch = history["epoch"] == history["epoch"].max()
        last_logs.update(loss=float(history["loss"][last_epoch].mean()),
                         accuracy=float(history["accuracy"][last_epoch].mean()))

    summary = {
        "val_accuracy": number("val_accuracy"), "val_loss": number("val_loss"),
        "train_loss": number("loss"), "train_accuracy": number("accuracy"),
        "parameters": count_parameters(net), "parameters_with_auxiliary": count_parameters(net, True),
        "wall_time_seconds": round(float(wall_time.numpy()), 1),
        "wall_seconds_this_process": round(time.time() - started, 1),
        "epochs": cfg.epochs, "steps": int(trainer.step.numpy()), "steps_per_epoch": steps_per_epoch,
        "dataset": data.name, "data_dir": cfg.data_dir, "num_classes": data.num_classes,
        "class_names": list(data.class_names), "image_size": image_size,
        "train_images": len(train_idx), "val_images": len(val_idx),
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "model": model_path,
    }
    runs.atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    report.write_report(run_dir, "train", finished=True)
    summary["run_dir"] = run_dir
    return summary
