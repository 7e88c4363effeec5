"""The search follows the official code's trajectory (issue: fidelity), not only its single step.

Each golden (tests/trajectory_golden.py) is 40 steps of the official search loop
on a C=4, 5-cell supernet. FI is chaotic at this size (the same official run in
float64 parts from float32 at step 8), so the test compares:
(a) lr and the clock t of every step, exactly;
(b) the schedule, teacher-forced: fed the golden's FI sequence, the project's
    own train_step bookkeeping reproduces every alpha_step decision, tau, FI
    EWMA and (ADMM) Z/U update;
(c) the free-running dynamics over the first 3 steps: loss and FI.
DPRIME_TRAJECTORY_NPZ names one golden to test instead of the shipped three.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from reference_weights import load_reference, nhwc
from trajectory_golden import load_trajectory, trajectory_paths
from dprime_tf.searcher import BilevelSearch
from dprime_tf.spaces.cnn.supernet import SearchNetwork

pytestmark = pytest.mark.golden

PATHS = trajectory_paths()
FREE_STEPS = 3
FREE_RUN = 5  # steps run free (the rest of the golden's steps are checked teacher-forced)
# The official code itself, replayed from trajectory_admm.npz (torch 2.13 CPU, float32 and float64
# alike), gives FI 26.90 at step 1 where the recording says 26.27 (2.4%; loss at step 2 +8e-4):
# this golden's dynamics are reproducible for one step only. Ours: 26.67.
FREE_STEPS_OF = {"admm": 1}


def _search(data, cls=BilevelSearch):
    cfg = data["cfg"]
    net = SearchNetwork(cfg["init_channels"], cfg["layers"], 10, image_size=data["x_weight"].shape[-1])
    load_reference(net, data)
    search = cls(
        net, steps_per_epoch=cfg["steps_per_epoch"], epochs=cfg["epochs"], schedule=cfg["schedule"],
        regularizer={"darts": "none"}.get(cfg["reg"], cfg["reg"]), rho=cfg["rho"], schedfreq=cfg["schedfreq"],
        threshold_multiplier=cfg["threshold_multiplier"], fi_ewma_beta=cfg["fi_ewma_beta"],
        learning_rate=cfg["learning_rate"], learning_rate_min=cfg["learning_rate_min"],
        admm_freq=cfg["admm_freq"], init_alpha_threshold=cfg["init_alpha_threshold"])
    return net, search


def _stream(x, y, repeat=False):
    """The golden's (steps, batch, C, H, W) batches as a stream of single NHWC examples."""
    x, y = x.reshape((-1,) + x.shape[-3:]), y.reshape(-1)
    ds = tf.data.Dataset.from_tensor_slices((nhwc(x), y.astype(np.int32)))
    return ds.repeat() if repeat else ds


@pytest.fixture(scope="module", params=PATHS, ids=[os.path.basename(p) for p in PATHS])
def golden(request):
    return load_trajectory(request.param)


@pytest.fixture(scope="module")
def free_run(golden):
    """The project's search, free-running from the golden's weights and batches: the first
    FREE_RUN steps' logs (after that, FI's chaos takes over; see test_free_running_first_steps)."""
    _, search = _search(golden)
    # The alpha stream: the golden's alpha batches in order (cycled: a free run may take more).
    search.set_alpha_stream(_stream(golden["x_alpha"], golden["y_alpha"], repeat=True).batch(golden["cfg"]["batch_size"]))
    step = search.make_train_function()
    batches = iter(_stream(golden["x_weight"], golden["y_weight"]).batch(golden["cfg"]["batch_size"]))
    logs = [{k: float(v) for k, v in step(batches).items()} for _ in range(FREE_RUN)]
    return {k: np.array([row[k] for row in logs]) for k in logs[0]}


def test_lr_and_clock_of_every_step(golden, teacher_forced):
    """(a) the cosine lr stepped at the top of each epoch and t ticked before each step
    (the train step's own logs, with the golden's FI fed in: the schedule of the clock
    and the lr does not depend on the weight step's numbers)."""
    np.testing.assert_allclose(teacher_forced["lr"], golden["lr"], rtol=1e-6)
    epochs = golden["cfg"]["epochs"]
    np.testing.assert_allclose(teacher_forced["progress"] * epochs, golden["clock"], rtol=1e-6)


def test_free_running_first_steps(golden, free_run):
    """(c) loss and FI of the first steps (after that FI's chaos takes over)."""
    n = FREE_STEPS_OF.get(golden["cfg"]["reg"], FREE_STEPS)
    np.testing.assert_allclose(free_run["batch_loss"][:n], golden["loss"][:n], rtol=1e-4)
    # Step 0 starts from the golden's own weights; after it, float32 summation order (oneDNN's
    # thread split differs between a busy and an idle machine: measured 2.8e-4 at step 1 and
    # 3.5e-3 at step 2 in CI, 1e-4 when idle) is amplified by FI's chaos, hence 1e-2 after step 0.
    np.testing.assert_allclose(free_run["fi"][:1], golden["fi"][:1], rtol=1e-4)
    np.testing.assert_allclose(free_run["fi"][:n], golden["fi"][:n], rtol=1e-2)
    np.testing.assert_array_equal(free_run["alpha_step"][:FREE_STEPS], golden["alpha_step"][:FREE_STEPS])
    differ = np.flatnonzero(free_run["alpha_step"] != golden["alpha_step"][:FREE_RUN])
    first = int(differ[0]) if len(differ) else None
    print(f"\nfree-running alpha-step decisions over {FREE_RUN} steps first differ at step {first} "
          f"(FI at step 4: ours {free_run['fi'][4]:.4f}, official {golden['fi'][4]:.4f})")


class _TeacherForced(BilevelSearch):
    """The project's train_step with the golden's FI in place of the weight step's own."""

    golden_fi = None

    def _replica_weight_step(self, data):
        return {"loss": tf.constant(0.0), "accuracy": tf.constant(0.0),
                "fi": tf.gather(self.golden_fi, self.search_step)}

    def _replica_alpha_step(self, alpha_data, progress):
        return tf.constant(0.0)


@pytest.fixture(scope="module")
def teacher_forced(golden):
    """Every step's logs of the project's train_step with the golden's FI fed in."""
    _TeacherForced.golden_fi = tf.constant(golden["fi"], tf.float32)
    _, search = _search(golden, _TeacherForced)
    search.set_alpha_stream(_stream(golden["x_alpha"], golden["y_alpha"], repeat=True).batch(2))
    batch = (tf.zeros((1, 32, 32, 3)), tf.zeros((1,), tf.int32))
    rows = [search.train_step(batch) for _ in range(len(golden["fi"]))]
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def test_teacher_forced_schedule_reproduces_every_decision(golden, teacher_forced):
    """(b) decisions, tau, FI EWMA and ADMM updates of all steps from the golden's FI sequence."""
    got = teacher_forced
    np.testing.assert_array_equal(got["alpha_step"], golden["alpha_step"].astype(float))
    np.testing.assert_allclose(got["tau"], golden["tau"], rtol=1e-5)
    np.testing.assert_allclose(got["fi_ewma"], golden["fi_ewma"], rtol=1e-5)
    np.testing.assert_array_equal(got["admm_update"], golden["admm_update"].astype(float))
    assert golden["alpha_step"].any()  # the golden exercises the schedule
