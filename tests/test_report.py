"""What users look at: report.html in every run directory, TensorBoard per step,
plain progress lines in files, plots that leave matplotlib's backend alone, tuning results."""

import html.parser
import io
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"
TINY_SEARCH = ["--dataset=sample", "--image_size=16", "--layers=3", "--init_channels=4", "--batch_size=16",
               "--val_steps=1", "--seed=5", "--epochs=2", "--steps_per_epoch=4", "--schedule=fixed", "--schedfreq=2",
               "--arch_learning_rate=0.01"]
SEARCH_STEPS = 8


def run_to_files(tmp, module, *args, name="run"):
    """Runs a command line with stdout and stderr going to files (not a terminal)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    out, err = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.run([sys.executable, "-m", module, *args], stdout=o, stderr=e, cwd=ROOT, env=env,
                              timeout=900)
    return proc.returncode, out.read_bytes(), err.read_bytes()


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def report_images(run_dir) -> list[str]:
    """The images report.html references; each exists next to it and is a valid PNG."""
    from PIL import Image
    page = (run_dir / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    parser = _Images()
    parser.feed(page)
    assert parser.sources
    for src in parser.sources:
        path = run_dir / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == PNG, src
        with Image.open(path) as im:
            im.verify()
    return parser.sources


def step_values(run_dir, tag):
    """{step: count} of a scalar tag in the run's per-step TensorBoard events, read back
    with TensorBoard's event reader."""
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / "steps"),
                                             size_guidance={event_accumulator.TENSORS: 0,
                                                            event_accumulator.SCALARS: 0})
    acc.Reload()
    events = acc.Tensors(tag) if tag in acc.Tags()["tensors"] else acc.Scalars(tag)
    counts = {}
    for event in events:
        counts[event.step] = counts.get(event.step, 0) + 1
    return counts, acc


def plain(data: bytes, what: str):
    assert b"\x1b" not in data, f"ANSI escape in {what}: {data[:500]!r}"
    assert b"\r" not in data, f"carriage return in {what}"


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_search")
    run_dir = tmp / "run"
    rc, out, err = run_to_files(tmp, "dprime_tf.search", *TINY_SEARCH, f"--output_dir={run_dir}")
    assert rc == 0, err[-3000:]
    return run_dir, out, err


@pytest.mark.slow
def test_search_report_has_every_picture(search_run):
    run_dir, _, _ = search_run
    sources = report_images(run_dir)
    for name in ("cell_normal", "cell_reduce", "alpha_heatmap_normal", "alpha_heatmap_reduce",
                 "alpha_evolution_normal", "alphas_normal", "schedule", "curves", "lr"):
        assert f"plots/{name}.png" in sources, name
    epochs = json.loads((run_dir / "epochs.json").read_text())
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_accuracy" in epochs[-1]
    assert "finished" in (run_dir / "report.html").read_text()


@pytest.mark.slow
def test_search_tensorboard_has_one_fi_and_tau_per_step(search_run):
    run_dir, _, _ = search_run
    for tag in ("fi", "tau", "fi_ewma", "alpha_step", "lr", "batch_loss"):
        counts, acc = step_values(run_dir, tag)
        assert counts == {s: 1 for s in range(SEARCH_STEPS)}, (tag, counts)
    assert {"alphas/normal", "alphas/reduce"} <= set(acc.Tags()["tensors"])  # heatmaps per epoch
    assert "genotype" in " ".join(acc.Tags()["tensors"])


@pytest.mark.slow
def test_search_output_to_a_file_is_plain(search_run):
    _, out, err = search_run
    plain(out, "stdout")
    plain(err, "stderr")
    text = out.decode()
    assert "epoch 2/2 step 4/4" in text and "alpha_steps 4" in text and "e+00" not in text


@pytest.mark.slow
def test_cnn_training_report_and_tensorboard(tmp_path):
    run_dir = tmp_path / "train"
    rc, out, err = run_to_files(tmp_path, "dprime_tf.train", "--genotype=DARTS_V2", "--dataset=sample",
                                "--image_size=16", "--init_channels=4", "--layers=3", "--batch_size=16", "--epochs=2",
                                "--steps_per_epoch=3", "--noauxiliary", "--cutout=0", f"--output_dir={run_dir}")
    assert rc == 0, err[-3000:]
    plain(out, "stdout")
    sources = report_images(run_dir)
    assert {"plots/cell_normal.png", "plots/cell_reduce.png", "plots/curves.png", "plots/lr.png"} <= set(sources)
    counts, _ = step_values(run_dir, "batch_loss")
    assert counts == {s: 1 for s in range(6)}


@pytest.mark.slow
def test_recurrent_search_and_training_reports(tmp_path):
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    rc, out, err = run_to_files(tmp_path, "dprime_tf.search", "--flagfile=configs/ptb_quick.flags",
                                f"--output_dir={search_dir}", "--epochs=1", "--steps_per_epoch=3", "--val_steps=2",
                                "--emsize=16", "--nhid=16", name="search")
    assert rc == 0, err[-3000:]
    plain(out, "stdout")
    assert {"plots/cell_recurrent.png", "plots/alpha_heatmap_recurrent.png", "plots/schedule.png"} <= set(
        report_images(search_dir))
    assert step_values(search_dir, "tau")[0] == {s: 1 for s in range(3)}
    rc, out, err = run_to_files(tmp_path, "dprime_tf.train", "--flagfile=configs/ptb_train_quick.flags",
                                f"--genotype={search_dir}", f"--output_dir={train_dir}", "--epochs=1",
                                "--steps_per_epoch=3", "--emsize=16", "--nhid=16", name="train")
    assert rc == 0, err[-3000:]
    plain(out, "stdout")
    assert {"plots/cell_recurrent.png", "plots/curves.png"} <= set(report_images(train_dir))


# -- fast ------------------------------------------------------------------------------
def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    code = ("import matplotlib; matplotlib.use('svg'); import dprime_tf.plots as p, dprime_tf.report, "
            "dprime_tf.show, sys; from dprime_tf.spaces.cnn.genotype import DARTS_V2 as g; "
            f"p.plot_cell({str(tmp_path / 'c.png')!r}, g.normal, g.normal_concat, 'normal'); "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG


def test_progress_lines_in_a_file_are_plain_with_integer_counts():
    from dprime_tf.progress import ProgressBar
    stream = io.StringIO()  # not a terminal
    bar = ProgressBar(("loss", "accuracy", "alpha_steps", "tau"), steps_per_epoch=20, epochs=1, stream=stream)
    bar.params = {"steps": 20}
    bar.on_epoch_begin(0)
    for i in range(20):
        bar.on_train_batch_end(i, {"loss": 2.3, "accuracy": 0.1, "alpha_steps": float(i // 2), "tau": 1.5e-4})
    bar.on_epoch_end(0, {"loss": 2.3})
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("epoch 1/1 step 20/20 loss 2.3000 accuracy 0.1000 alpha_steps 9 ")
    assert "ETA" in lines[0] and "e+00" not in text


def test_tuning_results_table_and_plot(tmp_path):
    from dprime_tf import tuning_report
    project = tmp_path / "dprime"
    for i, (score, rho) in enumerate([(0.2, 0.1), (0.35, 0.3), (None, 0.5)]):
        (project / f"trial_{i:02d}").mkdir(parents=True)
        (project / f"trial_{i:02d}" / "trial.json").write_text(json.dumps({
            "trial_id": f"{i:02d}", "status": "COMPLETED" if score else "FAILED", "score": score,
            "hyperparameters": {"values": {"rho": rho, "reg": "prox", "tuner/epochs": 2}}}))
    best = {"trial_id": "01", "objective": "val_accuracy", "score": 0.35, "hyperparameters": {"rho": 0.3},
            "flagfile": str(tmp_path / "best.flags")}
    table = tuning_report.write(str(tmp_path), str(project), best, "max")
    assert table.splitlines()[2].startswith("*01") and "tuner/epochs" not in table
    assert (tmp_path / "trials.csv").read_text().splitlines()[0] == "trial,status,objective,rho,reg"
    assert (tmp_path / "plots" / "trials.png").read_bytes()[:8] == PNG
    assert "plots/trials.png" in (tmp_path / "report.html").read_text()


def test_redraw_pacer_keeps_drawing_to_a_tenth_of_the_run():
    """An epoch's end redraws once 10x the last drawing's duration has passed since it."""
    from dprime_tf.report import RedrawPacer
    now = [0.0]
    pacer = RedrawPacer(ratio=10, first_cost=3.0, clock=lambda: now[0])
    now[0] = 29.0
    assert not pacer.due()  # before any drawing: 10 x 3 s from the start

    def draw(seconds):
        now[0] += seconds
        return "drawn"

    now[0] = 30.0
    assert pacer.due() and pacer.redraw(lambda: draw(2.0)) == "drawn"
    assert pacer.last == 32.0 and pacer.cost == 2.0
    now[0] = 51.9
    assert not pacer.due()  # 19.9 s after a 2 s drawing
    now[0] = 52.0
    assert pacer.due()
    # epochs longer than 10 x the drawing: every epoch redraws
    for epoch_end in (100.0, 200.0, 300.0):
        now[0] = epoch_end
        assert pacer.due()
        pacer.redraw(lambda: draw(5.0))
    # a drawing that fails still counts its time (the callback reports it and the run goes on)
    now[0] = 400.0

    def broken():
        now[0] += 1.0
        raise OSError("disk full")
    with pytest.raises(OSError):
        pacer.redraw(broken)
    assert pacer.last == 401.0 and pacer.cost == 1.0


def test_a_heatmap_of_the_same_weights_is_drawn_once(tmp_path, monkeypatch):
    """A search draws each cell's heatmap for TensorBoard at every epoch end and its report
    draws the last one again: the second call writes the first drawing's PNG."""
    import numpy as np

    from dprime_tf import plots
    from dprime_tf.spaces.primitives import CNN_PRIMITIVES
    drawn = []
    real = plots.png_bytes
    monkeypatch.setattr(plots, "png_bytes", lambda fig, *a: drawn.append(fig) or real(fig, *a))
    weights = np.random.default_rng(0).dirichlet(np.ones(8), 14).astype(np.float32)
    first = plots.plot_alpha_heatmap(None, weights, CNN_PRIMITIVES, "normal cell: softmax(alpha) after epoch 2")
    again = plots.plot_alpha_heatmap(tmp_path / "h.png", weights.astype(np.float64), CNN_PRIMITIVES,
                                     "normal cell: softmax(alpha) after epoch 2")
    assert len(drawn) == 1 and first == again == (tmp_path / "h.png").read_bytes()
    assert first[:8] == PNG
    moved = weights.copy()
    moved[0, 0] += 0.25  # other weights, or another title: drawn anew
    assert plots.plot_alpha_heatmap(None, moved, CNN_PRIMITIVES, "normal cell: softmax(alpha) after epoch 2") != first
    assert plots.plot_alpha_heatmap(None, weights, CNN_PRIMITIVES, "reduce cell: softmax(alpha) after epoch 2") != first
    assert len(drawn) == 3
