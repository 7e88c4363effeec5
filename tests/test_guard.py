"""A diverged run stops at its first non-finite step, keeps its last good checkpoint, marks `nan`."""

import numpy as np
import pytest
import tensorflow as tf

from dprime_tf import runs
from dprime_tf.guard import Diverged, NonFiniteGuard
from dprime_tf.search_job import SearchConfig, run_search


class _Model:
    stop_training = False


def _guard():
    step = tf.Variable(8, dtype=tf.int64)
    guard = NonFiniteGuard(("batch_loss", "fi", "batch_alpha_loss"), step,
                           applies_if={"batch_alpha_loss": "alpha_step"})
    guard.set_model(_Model())
    return guard


def test_guard_names_the_step_and_the_quantity():
    guard = _guard()
    guard.on_train_batch_end(0, {"batch_loss": 2.3, "fi": 10.0, "alpha_step": 0.0, "batch_alpha_loss": np.nan})
    with pytest.raises(Diverged, match=r"^step 7: the gradient information FI .* is inf; the run stopped"):
        guard.on_train_batch_end(0, {"batch_loss": 2.3, "fi": np.inf, "alpha_step": 0.0})
    with pytest.raises(Diverged, match="step 7: the alpha loss is nan"):
        _guard().on_train_batch_end(0, {"batch_loss": 2.3, "fi": 1.0, "alpha_step": 1.0,
                                        "batch_alpha_loss": np.nan})
    assert "\n" not in str(Diverged("x"))


def test_history_writes_non_finite_values_explicitly(tmp_path):
    step = tf.Variable(1, dtype=tf.int64)
    h = runs.StepHistory(str(tmp_path / "history.csv"), ["batch_loss", "batch_alpha_loss", "alpha_step"], step,
                         blank_unless={"batch_alpha_loss": "alpha_step"})
    h.on_train_batch_end(0, {"batch_loss": np.nan, "batch_alpha_loss": np.nan, "alpha_step": 0.0})
    step.assign(2)
    h.on_train_batch_end(0, {"batch_loss": np.inf, "batch_alpha_loss": np.nan, "alpha_step": 1.0})
    h.close()
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["step,batch_loss,batch_alpha_loss,alpha_step", "0,nan,,0", "1,inf,nan,1"]


@pytest.mark.slow
def test_diverging_search_stops_before_saving_the_bad_state(tmp_path):
    """lr 1e38 overflows the weights within a few steps: the search stops with one line naming the
    step, history.csv shows the non-finite value, the checkpoints are all of finite steps before it
    and no genotype.json is written."""
    out = tmp_path / "run"
    cfg = SearchConfig(dataset="sample", output_dir=str(out), epochs=2, steps_per_epoch=6, batch_size=8,
                       image_size=16, layers=3, init_channels=4, val_steps=1, checkpoint_every=2, verbose=0,
                       learning_rate=1e38, learning_rate_min=1e38)
    with pytest.raises(Diverged) as err:
        run_search(cfg)
    step = int(str(err.value).split(":")[0].split()[1])
    h = runs.read_history(out / "history.csv")
    assert h["step"][-1] == step
    assert not (np.isfinite(h["batch_loss"][-1]) and np.isfinite(h["fi"][-1]))
    assert np.isfinite(h["batch_loss"][:-1]).all() and np.isfinite(h["fi"][:-1]).all()
    assert not (out / "genotype.json").exists()
    # Checkpoints are numbered by the steps done: none holds the bad step's result (step + 1 done).
    saved = tf.train.get_checkpoint_state(str(out / "checkpoints"))
    numbers = [int(p.rsplit("-", 1)[1]) for p in (saved.all_model_checkpoint_paths if saved else [])]
    assert all(n <= step for n in numbers), (numbers, step)


@pytest.mark.slow
def test_a_run_diverging_after_checkpoints_keeps_the_last_good_one(tmp_path):
    """A search resumed with an absurd learning rate: its first new step (6) has a finite loss and
    FI but blows the weights up, the next one's loss is nan: the run stops at step 7, and the
    checkpoint it resumed from (all finite) is still the latest, so lowering the rate and resuming
    again continues from good weights."""
    out = tmp_path / "run"
    cfg = SearchConfig(dataset="sample", output_dir=str(out), epochs=1, steps_per_epoch=6, batch_size=8,
                       image_size=16, layers=3, init_channels=4, val_steps=1, checkpoint_every=2, verbose=0)
    run_search(cfg)
    before = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert before.endswith("-6")
    import dataclasses
    with pytest.raises(Diverged, match=r"^step 7: the weight loss is nan"):
        run_search(dataclasses.replace(cfg, epochs=2, resume=True, learning_rate=1e38, learning_rate_min=1e38))
    assert tf.train.latest_checkpoint(str(out / "checkpoints")) == before
    reader = tf.train.load_checkpoint(before)
    values = [reader.get_tensor(name) for name, dtype in reader.get_variable_to_dtype_map().items()
              if dtype.is_floating]
    assert len(values) > 20 and all(np.isfinite(v).all() for v in values)
    h = runs.read_history(out / "history.csv")
    assert list(h["step"]) == list(range(8)) and np.isfinite(h["batch_loss"][:7]).all()
    assert not np.isfinite(h["batch_loss"][7])


def test_no_checkpoint_of_non_finite_weights(tmp_path):
    """The checkpoint callback refuses to save weights that are not finite (a step whose
    loss and FI were finite can still overflow them) and stops the run with one line."""
    import keras
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    step = tf.Variable(5, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / "ck"), max_to_keep=2)
    save = runs.StepCheckpoint(manager, step, every=1)
    save.set_model(model)
    save.on_train_batch_end(0)
    assert tf.train.latest_checkpoint(str(tmp_path / "ck")).endswith("-5")
    model.layers[0].kernel.assign([[1.0], [np.inf]])
    step.assign(6)
    with pytest.raises(Diverged, match=r"^step 5: 1 weight tensor\(s\) are not finite after it \(.*kernel"):
        save.on_train_batch_end(0)
    assert tf.train.latest_checkpoint(str(tmp_path / "ck")).endswith("-5")


@pytest.mark.slow
def test_diverging_training_stops_with_one_line(tmp_path):
    """The final network's training has the same guard: lr 1e38 stops it at its first non-finite
    step, before a checkpoint or model.keras of the bad state."""
    from dprime_tf.train_job import TrainConfig, run_training
    out = tmp_path / "train"
    cfg = TrainConfig(genotype="DARTS_V2", dataset="sample", output_dir=str(out), epochs=1, steps_per_epoch=4,
                      batch_size=8, image_size=16, init_channels=4, layers=3, auxiliary=False, cutout=0,
                      drop_path_prob=0.0, checkpoint_every=100, verbose=0, learning_rate=1e38, learning_rate_min=1e38,
                      grad_clip=1e38)
    with pytest.raises(Diverged, match=r"^step \d+: the (weight )?loss is (nan|inf)") as err:
        run_training(cfg)
    step = int(str(err.value).split(":")[0].split()[1])
    h = runs.read_history(out / "history.csv")
    assert h["step"][-1] == step and not np.isfinite(h["loss"][-1] if "loss" in h else h["batch_loss"][-1])
    assert not (out / "model.keras").exists() and not (out / "checkpoints").exists()
