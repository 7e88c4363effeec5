"""report.html: one page per run directory (search or final training, either
search space) that a person opens in a browser, with its pictures in plots/.

    <run>/report.html          rewritten at epoch ends (see `RedrawPacer`: every epoch
                               once epochs take half a minute or more) and at the end;
                               it reloads itself every minute until the run finishes
    <run>/epochs.json          per epoch: the epoch's logs (loss, accuracy or perplexity,
                               validation, ...) and the step it ended at
    <run>/plots/               the pictures (PNG), next to report.html

Everything is read back from the run directory (flags.txt, summary.json,
history.csv, genotype.json / genotypes/, alpha_history.npz, decisiveness.json,
epochs.json), so `write_report(run_dir)` also (re)builds the page of a finished
or older run: `python -m dprime_tf.report <run_dir>`. No network access is
needed to view it.

Pictures (plots/):
- cell_<kind>.png           the genotype's cells (search: latest epoch; training: the trained one)
- alpha_heatmap_<kind>.png  softmax(alpha) of the latest epoch, edges x ops (search)
- alpha_evolution_<kind>.png   the same heatmap at up to 6 epochs over the search
- alphas_<kind>.png         each edge's op weights over the epochs (search)
- schedule.png              FI, FI EWMA, tau and the alpha steps per step (search)
- curves.png                loss and accuracy/perplexity per step, validation per epoch
- lr.png                    the learning rate per step
"""

from __future__ import annotations

import csv
import glob
import html
import json
import math
import os
import time

import numpy as np

from dprime_tf.atomic import atomic_write, atomic_write_json, read_json_or

REPORT = "report.html"
EPOCHS = "epochs.json"


# -- reading the run directory ------------------------------------------------------
def read_history(path: str) -> dict[str, np.ndarray]:
    """history.csv as float columns (empty cells NaN); {} if absent or empty. Rows a
    writer is still appending (a partial last line) are skipped."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [r for r in reader if header and len(r) == len(header)]
    if not header or not rows:
        return {}

    def number(text):
        try:
            return float(text) if text != "" else np.nan
        except ValueError:
            return np.nan
    columns = np.array([[number(c) for c in r] for r in rows], dtype=np.float64)
    return {name: columns[:, i] for i, name in enumerate(header)}


def record_epoch(run_dir: str, epoch: int, logs: dict, step: int | None = None) -> list[dict]:
    """Stores the logs of `epoch` (0-based) in epochs.json, dropping the entries of that
    epoch and later ones (a resumed run repeats them); returns the list."""
    path = os.path.join(run_dir, EPOCHS)
    entries = [e for e in read_json_or(path, []) if e.get("epoch", 0) < epoch + 1]
    entry = {"epoch": epoch + 1, "step": step, "time": round(time.time(), 1)}
    for key, value in (logs or {}).items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        entry[key] = value if math.isfinite(value) else None
    entries.append(entry)
    atomic_write_json(path, entries)
    return entries


def _genotype(run_dir: str, kind: str):
    """The genotype to show: genotype.json (a search writes it at its end), else a
    running search's latest epoch's (genotypes/)."""
    latest = sorted(glob.glob(os.path.join(run_dir, "genotypes", "epoch_*.json")))
    path = os.path.join(run_dir, "genotype.json")
    if kind == "search" and latest and not os.path.exists(path):
        path = latest[-1]
    data = read_json_or(path)
    if data is None:
        return None, None
    from dprime_tf import spaces
    for space in spaces.registered():
        if space.is_genotype(data):
            try:
                return space, space.genotype_class().from_dict(data)
            except Exception:  # noqa: BLE001  (a broken file: the page says so)
                return space, None
    return None, None


# -- pictures -----------------------------------------------------------------------
def _plots(run_dir: str, kind: str, space, genotype, history: dict, epochs: list[dict]) -> dict:
    """Draws the pictures of the run into plots/; returns {section: [(file, caption), ...]}."""
    from dprime_tf import plots
    pdir = os.path.join(run_dir, "plots")
    out = {"cells": [], "heatmaps": [], "evolution": [], "alphas": [], "schedule": [], "curves": []}

    def rel(name):
        return f"plots/{name}"

    if space is not None and genotype is not None:
        missing = [k for k in space.genotype_kinds if not os.path.exists(os.path.join(pdir, f"cell_{k}.png"))]
        if missing:  # a search draws its cells every epoch itself; a training run's once, here
            space.draw_genotype(pdir, genotype)
        for k in space.genotype_kinds:
            if os.path.exists(os.path.join(pdir, f"cell_{k}.png")):
                out["cells"].append((rel(f"cell_{k}.png"), f"{k} cell"))

    alpha_path = os.path.join(run_dir, "alpha_history.npz")
    if kind == "search" and os.path.exists(alpha_path):
        from dprime_tf.spaces.primitives import CNN_PRIMITIVES, RNN_PRIMITIVES
        with np.load(alpha_path) as f:
            hist = {k: f[k] for k in f.files}
        for k, h in hist.items():
            if not len(h):
                continue
            prims = CNN_PRIMITIVES if h.shape[-1] == len(CNN_PRIMITIVES) else RNN_PRIMITIVES
            plots.plot_alpha_heatmap(os.path.join(pdir, f"alpha_heatmap_{k}.png"), h[-1], prims,
                                     f"{k} cell: softmax(alpha) after epoch {len(h)}")
            out["heatmaps"].append((rel(f"alpha_heatmap_{k}.png"),
                                  f"{k} cell after epoch {len(h)}: softmax(alpha) per edge (row) and op (column); "
                                  "each edge's largest weight in bold"))
            plots.plot_alpha_evolution(os.path.join(pdir, f"alpha_evolution_{k}.png"), h, prims,
                                       f"{k} cell: softmax(alpha) over the epochs")
            out["evolution"].append((rel(f"alpha_evolution_{k}.png"), f"{k} cell: the heatmap over the epochs"))
            if os.path.exists(os.path.join(pdir, f"alphas_{k}.png")):
                out["alphas"].append((rel(f"alphas_{k}.png"), f"{k} cell: each edge's op weights per epoch"))

    if not history or "step" not in history:
        return out
    step = history["step"]
    if kind == "search" and all(k in history for k in ("fi", "fi_ewma", "tau", "alpha_step")):
        plots.plot_schedule(os.path.join(pdir, "schedule.png"), history)
        out["schedule"].append((rel("schedule.png"), "the schedule: FI (trace of the empirical Fisher), its EWMA "
                                "and the threshold τ per step; below, the steps that took an alpha step"))

    loss_key = "batch_loss" if "batch_loss" in history else "loss" if "loss" in history else None
    series = {}
    if loss_key:
        series["loss"] = {"values": history[loss_key], "val": "val_loss"}
    if "batch_accuracy" in history or "accuracy" in history:
        series["accuracy"] = {"values": history.get("batch_accuracy", history.get("accuracy")), "val": "val_accuracy"}
    elif loss_key and ("perplexity" in history or "batch_perplexity" in history):
        with np.errstate(over="ignore"):
            series["perplexity"] = {"values": np.exp(history[loss_key]), "val": "val_perplexity", "log": True,
                                    "beta": 0.1}
    if "batch_alpha_loss" in history and np.isfinite(history["batch_alpha_loss"]).any():
        series["alpha loss"] = {"values": history["batch_alpha_loss"], "beta": 0.3}
    if series:
        what = "search (supernet; validation on the alpha split)" if kind == "search" else "training"
        plots.plot_curves(os.path.join(pdir, "curves.png"), step, series, epochs, title=what)
        out["curves"].append((rel("curves.png"), "per step (faint), moving average, and validation at each "
                              "epoch end (red)"))
    if "lr" in history and np.isfinite(history["lr"]).any():
        extra = {k: history[k] for k in ("drop_path_prob",) if k in history}
        plots.plot_lr(os.path.join(pdir, "lr.png"), step, history["lr"], extra)
        out["curves"].append((rel("lr.png"), "learning rate per step" + (" (dashed: drop-path probability)"
                                                                       if extra else "")))
    return out


# -- the page ------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 1.5em auto;
       max-width: 1250px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd;
     padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.9em; } .status { display: inline-block; padding: 0.1em 0.6em;
        border-radius: 0.8em; font-size: 0.85em; background: #e8f0fe; color: #1a4f9c; }
.status.done { background: #e6f4ea; color: #1e6b35; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 1em; font-size: 0.9em; }
.wide { overflow-x: auto; } .wide td { white-space: nowrap; }
"""


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return html.escape(str(value))
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return f"<code>{html.escape(json.dumps(value))}</code>"
    return html.escape(str(value))


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{_fmt(c)}</td>" if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def markdown_table_html(text: str) -> str:
    """A Markdown pipe table (and the plain paragraphs after it) as HTML: results.md on a page."""
    rows, paragraphs = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
        elif line.strip():
            paragraphs.append(f"<p>{html.escape(line.strip())}</p>")
    return (_table(rows[1:], rows[0]) if rows else "") + "".join(paragraphs)


def _figures(items) -> str:
    return "".join(f"<figure><img src='{html.escape(src)}' alt='{html.escape(cap)}'>"
                   f"<figcaption>{html.escape(cap)}</figcaption></figure>" for src, cap in items)


def _epoch_table(epochs: list[dict], decisive: list[dict]) -> str:
    if not epochs:
        return ""
    skip = {"epoch", "step", "time", "margin_ratio", "edge_margin_ratio", "choices_changed"}
    keys = []
    for e in epochs:
        keys += [k for k in e if k not in skip and k not in keys and not k.startswith("batch_")
                 and k not in ("progress", "alpha_step")]
    by_epoch = {d.get("epoch"): d for d in decisive or []}
    extra = ["op margin x initial", "edge margin x initial", "ops changed", "verdict"] if by_epoch else []
    rows = []
    for e in epochs[-60:]:
        d = by_epoch.get(e["epoch"], {})
        row = [e["epoch"], None if e.get("step") is None else e["step"] + 1] + [e.get(k) for k in keys]
        if extra:
            row += [d.get("margin_ratio"), d.get("edge_margin_ratio"), d.get("choices_changed"), d.get("verdict", "")]
        rows.append(row)
    note = f"<p class='meta'>the last 60 of {len(epochs)} epochs</p>" if len(epochs) > 60 else ""
    return note + f"<div class='wide'>{_table(rows, ['epoch', 'steps done', *keys, *extra])}</div>"


def write_report(run_dir: str, kind: str | None = None, finished: bool | None = None) -> str:
    """(Re)writes <run_dir>/report.html and its pictures; returns the page's path.
    `kind` is "search" or "train" (default: a search if the run has alpha_history.npz);
    `finished` defaults to whether summary.json exists (an unfinished page reloads itself)."""
    run_dir = os.path.abspath(run_dir)
    if kind is None:
        kind = "search" if os.path.exists(os.path.join(run_dir, "alpha_history.npz")) else "train"
    summary = read_json_or(os.path.join(run_dir, "summary.json"))
    finished = summary is not None if finished is None else finished
    epochs = read_json_or(os.path.join(run_dir, EPOCHS), [])
    decisive = read_json_or(os.path.join(run_dir, "decisiveness.json"), [])
    history = read_history(os.path.join(run_dir, "history.csv"))
    space, genotype = _genotype(run_dir, kind)
    pictures = _plots(run_dir, kind, space, genotype, history, epochs)

    title = f"{'Search' if kind == 'search' else 'Training'}: {os.path.basename(run_dir)}"
    steps = int(np.nanmax(history["step"])) + 1 if history and len(history.get("step", [])) else 0
    status = ("finished" if finished else "running") + f" · {len(epochs)} epoch(s), {steps:,} step(s)"
    if kind == "search" and "alpha_steps" in history and len(history["alpha_steps"]):
        status += f" · {int(np.nanmax(history['alpha_steps'])):,} alpha steps"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "" if finished else "<meta http-equiv='refresh' content='60'>",
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'><span class='status{' done' if finished else ''}'>{html.escape(status)}</span> "
             f"&nbsp; {html.escape(run_dir)} &nbsp; updated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"]
    sections = [("genotype", "Genotype"), ("alphas", "Architecture weights"), ("schedule", "Schedule"),
                ("curves", "Curves"), ("epochs", "Epochs"), ("summary", "Summary"), ("flags", "Flags")]
    if kind != "search":
        sections = [(a, t) for a, t in sections if a not in ("alphas", "schedule")]
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in sections) + "</nav>")

    parts.append("<h2 id='genotype'>Genotype</h2>")
    if genotype is not None:
        which = "the latest epoch's" if kind == "search" and not finished else "the"
        lines = "\n".join(space.genotype_lines(genotype))
        parts.append(f"<p class='meta'>{which} genotype ({space.name} space); <code>dprime-show draw "
                     f"{html.escape(os.path.join(run_dir, 'genotype.json'))}</code> draws any genotype</p>")
        parts.append(f"<pre>{html.escape(lines)}</pre>")
        parts.append(_figures(pictures["cells"]))  # one a row: at full size their op labels stay readable
    else:
        parts.append("<p class='meta'>no genotype yet</p>")
    if kind == "search":
        parts.append("<h2 id='alphas'>Architecture weights</h2>")
        if pictures["heatmaps"]:
            parts.append("<p class='meta'>softmax(alpha): one row per edge (input → node), one column per op; "
                         "colours span the weights' own range</p>")
            for group in ("heatmaps", "evolution"):  # at their own size: the printed weights stay readable
                parts.append(_figures(pictures[group]))
            parts.append(_figures(pictures["alphas"]))
        else:
            parts.append("<p class='meta'>after the first epoch</p>")
        parts.append("<h2 id='schedule'>Schedule</h2>")
        parts.append(_figures(pictures["schedule"]) or "<p class='meta'>after the first epoch</p>")
    parts.append("<h2 id='curves'>Curves</h2>")
    parts.append(_figures(pictures["curves"]) or "<p class='meta'>after the first epoch</p>")
    parts.append("<h2 id='epochs'>Epochs</h2>")
    parts.append(_epoch_table(epochs, decisive) or "<p class='meta'>none finished yet</p>")
    parts.append("<h2 id='summary'>Summary</h2>")
    if summary:
        flat = [(k, v) for k, v in summary.items() if k not in ("genotype", "decisiveness", "class_names")]
        if isinstance(summary.get("decisiveness"), dict):
            flat += [(f"decisiveness: {k}", v) for k, v in summary["decisiveness"].items()]
        parts.append(_table(flat, ["", "value"]))
    else:
        parts.append("<p class='meta'>written when the run finishes</p>")
    parts.append("<h2 id='flags'>Flags</h2>")
    try:
        with open(os.path.join(run_dir, "flags.txt")) as f:
            flags_text = f.read()
    except OSError:
        flags_text = ""
    parts.append(f"<pre>{html.escape(flags_text)}</pre>" if flags_text else "<p class='meta'>no flags.txt</p>")
    parts.append("</body></html>\n")
    path = os.path.join(run_dir, REPORT)
    atomic_write(path, "\n".join(p for p in parts if p))
    return path


# -- the Keras hook ----------------------------------------------------------------
class RedrawPacer:
    """Whether an epoch's end redraws a run's pictures (plots/ and report.html).

    Matplotlib takes seconds on a CPU for a search's dozen PNGs: on a tiny run
    (the tests', a first try of a config) drawing after every epoch was a third
    of the run's time. An epoch's end redraws when the time since the last
    redraw (or since the run started) is at least `ratio` times that redraw's
    duration (`first_cost` seconds before any), so pictures cost at most about
    1/(ratio + 1) of a run: runs whose epochs take half a minute or more redraw
    after every epoch. The end of a run always redraws (the jobs call
    `write_report(..., finished=True)` themselves).
    """

    def __init__(self, ratio: float = 10.0, first_cost: float = 3.0, clock=time.monotonic):
        self.ratio, self.cost, self.clock = float(ratio), float(first_cost), clock
        self.last = clock()

    def due(self) -> bool:
        return self.clock() - self.last >= self.ratio * self.cost

    def redraw(self, draw):
        """Runs draw() now and remembers how long it took."""
        start = self.clock()
        try:
            return draw()
        finally:
            self.last = self.clock()
            self.cost = self.last - start


def report_callback(run_dir: str, kind: str, step_variable=None, draw_first=None, pacer: RedrawPacer | None = None):
    """A Keras callback that records each epoch's logs (epochs.json) and, when
    `pacer` (default: a new RedrawPacer) says so, calls draw_first() (the job's
    own pictures) and rewrites the report. Put it after the callbacks that add
    logs (validation)."""
    import keras
    pacer = pacer or RedrawPacer()

    def draw():
        if draw_first is not None:
            draw_first()
        write_report(run_dir, kind, finished=False)

    class ReportCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            step = int(step_variable.numpy()) if step_variable is not None else None
            # the step just taken is step - 1 (history.csv's 0-based steps)
            record_epoch(run_dir, epoch, logs or {}, None if step is None else step - 1)
            if not pacer.due():
                return
            try:
                pacer.redraw(draw)
            except Exception as e:  # noqa: BLE001  (a picture must never stop a run)
                print(f"warning: report.html not updated: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                      flush=True)

    return ReportCallback()


def main(argv=None):
    import sys
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.path.isdir(args[0]):
        print("usage: python -m dprime_tf.report <run_dir>", file=sys.stderr)
        return 2
    print(write_report(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
