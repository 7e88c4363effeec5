"""One export: load, stage, convert, check, commit.

    from export.pipeline import export_model
    result = export_model("runs/cifar", "exports", "cifar", 1, onnx_path="exports/cifar-1.onnx")

Order (nothing is visible at the destinations before step 5):
  1. validate flags and paths, check the destinations and the existing
     models.config (no TensorFlow yet, so these fail fast);
  2. load the Keras model;
  3. write the SavedModel (and the ONNX file) to hidden temporaries next
     to their destinations;
  4. check: the signature and ONNX contract, only standard ops, parity of
     Keras / SavedModel / onnxruntime on the same random uint8 batch, and
     the SavedModel in a fresh process that cannot import the project;
  5. rename the ONNX file, the version directory and models.config into
     place (undoing the renames done if one fails).
A failure anywhere removes the temporaries: no half-written version.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from dprime_tf.atomic import Staging
from dprime_tf.runlock import DirLock

from . import layout
from .layout import ExportError

DEFAULT_TOLERANCE = 1e-4
DEFAULT_PARITY_IMAGES = 8


@dataclasses.dataclass
class Parity:
    """Max |difference| of logits between runtimes, and whether argmax classes agree."""
    images: int
    seed: int
    tolerance: float
    keras_vs_saved_model: float
    saved_model_classes_agree: bool
    keras_vs_onnx: float | None = None
    onnx_classes_agree: bool | None = None
    max_abs_logit: float = 0.0  # the scale the differences compare to

    @property
    def ok(self) -> bool:
        diffs = [self.keras_vs_saved_model] + ([self.keras_vs_onnx] if self.keras_vs_onnx is not None else [])
        return all(d <= self.tolerance for d in diffs)  # False for NaN

    def lines(self) -> list[str]:
        out = [f"parity on {self.images} random uint8 images (seed {self.seed}), logits tolerance "
               f"{self.tolerance:g} (max |logit| {self.max_abs_logit:.3g}):",
               f"  Keras vs SavedModel: max |diff| {self.keras_vs_saved_model:.3g}, classes "
               f"{'agree' if self.saved_model_classes_agree else 'DIFFER'}"]
        if self.keras_vs_onnx is not None:
            out.append(f"  Keras vs ONNX:       max |diff| {self.keras_vs_onnx:.3g}, classes "
                       f"{'agree' if self.onnx_classes_agree else 'DIFFER'}")
        return out


@dataclasses.dataclass
class ExportResult:
    model_path: str
    version_dir: str
    models_config: str
    onnx_path: str | None
    image_size: tuple
    num_classes: int
    parity: Parity
    signature: dict
    ops: list
    fresh_process: dict | None


def random_images(n=DEFAULT_PARITY_IMAGES, image_size=(32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *image_size, 3), dtype=np.uint8)


def check_parity(model, saved_model_run, onnx_run, images, tolerance=DEFAULT_TOLERANCE, seed=0) -> tuple:
    """Keras (on the batch normalized with the model's statistics) vs SavedModel and
    onnxruntime (on uint8).

    Returns (Parity, saved model outputs); raises nothing (see Parity.ok).
    """
    from .saved_model import normalize

    keras_logits = np.asarray(model(normalize(images, model), training=False), dtype=np.float32)
    keras_classes = np.argmax(keras_logits, axis=-1)
    sm = saved_model_run(images)
    parity = Parity(len(images), seed, tolerance,
                    float(np.max(np.abs(sm["logits"] - keras_logits))),
                    bool(np.array_equal(sm["classes"], keras_classes)),
                    max_abs_logit=float(np.max(np.abs(keras_logits))))
    if onnx_run is not None:
        ox = onnx_run(images)
        parity.keras_vs_onnx = float(np.max(np.abs(ox["logits"] - keras_logits)))
        parity.onnx_classes_agree = bool(np.array_equal(ox["classes"], keras_classes))
    return parity, sm


def export_model(model, output_dir, name, version, onnx_path=None, overwrite=False, opset=None,
                 image_size=None, tolerance=DEFAULT_TOLERANCE, parity_images=DEFAULT_PARITY_IMAGES, seed=0,
                 fresh_process_check=True, log=print) -> ExportResult:
    """Exports `model` (a .keras file or a training run directory) to
    `<output_dir>/<name>/<version>/` (+ models.config, + optional ONNX file).

    Raises ExportError (a UserError: one-line message) for bad inputs and
    failed checks; nothing is left at the destinations then.
    """
    # 1. Everything that needs no TensorFlow.
    name = layout.validate_name(name)
    version = layout.validate_version(version)
    if not output_dir:
        raise ExportError("--output_dir is required: the base directory of the exported models")
    if not tolerance >= 0:
        raise ExportError(f"the parity tolerance must be >= 0, got {tolerance}")
    if int(parity_images) < 1:
        raise ExportError(f"the parity check needs at least 1 image, got {parity_images}")
    if image_size is not None:
        image_size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(map(int, image_size))
        if min(image_size) < 1:
            raise ExportError(f"--image_size must be positive, got {image_size}")
    from . import onnx as onnx_export
    opset = onnx_export.check_opset(onnx_export.DEFAULT_OPSET if opset is None else opset)
    destination = layout.version_dir(output_dir, name, version)
    onnx_path = os.path.abspath(os.path.expanduser(onnx_path)) if onnx_path else None
    if onnx_path and (onnx_path == destination or onnx_path.startswith(destination + os.sep)):
        raise ExportError(f"--onnx={onnx_path} is inside the version directory; TF Serving reads that directory, "
                          "put the ONNX file elsewhere")
    if onnx_path and os.path.isdir(onnx_path):
        raise ExportError(f"--onnx={onnx_path} is a directory; give a file name such as model.onnx")
    model_path = layout.resolve_model_path(model)
    layout.check_destinations([destination, onnx_path], overwrite)
    config_path, config_text, config_old = layout.plan_models_config(output_dir, name)

    # 2. The Keras model.
    from . import saved_model
    keras_model = saved_model.load_keras_model(model_path)
    model_size = saved_model.model_image_size(keras_model)
    if image_size is None:
        if model_size is None:
            raise ExportError(f"{model_path} does not record its input size; pass --image_size")
        image_size = model_size
    log(f"model: {model_path} ({image_size[0]}x{image_size[1]} RGB input)")
    mean, std = saved_model.model_statistics(keras_model)
    log("preprocessing in the graph: (pixels/255 - mean) / std, mean "
        f"{', '.join(f'{v:.4f}' for v in mean)}, std {', '.join(f'{v:.4f}' for v in std)}")

    with Staging() as stage:
        # 3. Temporaries next to the destinations.
        staged_dir = stage.temp_dir(destination)
        serve = saved_model.save(keras_model, staged_dir, image_size)
        log(f"SavedModel written (staged in {staged_dir})")
        staged_onnx = None
        if onnx_path:
            staged_onnx = stage.temp_file(onnx_path)
            onnx_export.convert(serve, staged_onnx, opset)
            log(f"ONNX written (opset {opset}, staged in {staged_onnx})")

        # 4. Checks.
        signature = saved_model.check_signature(staged_dir, image_size)
        num_classes = signature["outputs"]["logits"][1][1]
        ops = saved_model.check_standard_ops(staged_dir)
        log(f"signature {saved_model.SIGNATURE}: images uint8 [batch, {image_size[0]}, {image_size[1]}, 3] -> "
            f"logits float32 [batch, {num_classes}], probabilities float32 [batch, {num_classes}], "
            "classes int64 [batch]")
        log(f"ops: {len(ops)} op types, all standard TensorFlow ops (no Python or custom ops)")
        if staged_onnx:
            onnx_export.check_signature(staged_onnx, image_size)
        images = random_images(int(parity_images), image_size, seed)
        parity, sm_outputs = check_parity(
            keras_model, saved_model.load(staged_dir), onnx_export.load(staged_onnx) if staged_onnx else None,
            images, tolerance, seed)
        for line in parity.lines():
            log(line)
        if not parity.ok:
            raise ExportError(f"parity check failed: logits differ by more than {tolerance:g} "
                              f"(SavedModel {parity.keras_vs_saved_model:.3g}"
                              + (f", ONNX {parity.keras_vs_onnx:.3g}" if parity.keras_vs_onnx is not None else "")
                              + "); nothing was written")
        fresh = None
        if fresh_process_check:
            fresh = saved_model.check_fresh_process(staged_dir, images, sm_outputs, tolerance)
            log(f"fresh process (python -I, dprime_tf not importable): loads and runs, logits max |diff| "
                f"{fresh['max_abs_diff']:.3g} vs in-process")
            fresh = {k: v for k, v in fresh.items() if k != "outputs"}

        # 5. Commit: ONNX, the version directory, then models.config pointing at it. Under the
        # export base directory's lock, with models.config read again: concurrent exports into
        # one base each add their entry, none is lost.
        with DirLock(os.path.dirname(config_path), "export base directory"):
            config_path, config_text, config_old = layout.plan_models_config(output_dir, name)
            staged_config = stage.temp_file(config_path)
            with open(staged_config, "w") as f:
                f.write(config_text)
            stage.commit()

    log(f"wrote {destination}")
    if onnx_path:
        log(f"wrote {onnx_path}")
    log(f"{'updated' if config_old is not None else 'wrote'} {config_path} (model '{name}', base_path "
        f"{os.path.dirname(destination)})")
    return ExportResult(model_path, destination, config_path, onnx_path, tuple(image_size), int(num_classes),
                        parity, signature, ops, fresh)
