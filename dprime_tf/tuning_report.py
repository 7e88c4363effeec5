"""Tuning results as a table and a plot (what `python -m dprime_tf.tune` leaves):

    <tune_dir>/trials.csv        one row per trial: id, status, objective, the tuned settings
    <tune_dir>/plots/trials.png  the objective per trial, the best so far, the best trial's settings
    <tune_dir>/report.html       both on one page, with the best flagfile's path

Read from keras-tuner's own files (<tune_dir>/<project>/trial_*/trial.json), so
`python -m dprime_tf.tuning_report <tune_dir> [project]` also rebuilds them later.
"""

from __future__ import annotations

import csv
import glob
import html
import io
import json
import math
import os

from dprime_tf.atomic import atomic_write


def read_trials(project_dir: str) -> list[dict]:
    """[{trial_id, status, score, hyperparameters}] of keras-tuner's trial.json files, by id."""
    trials = []
    for path in sorted(glob.glob(os.path.join(project_dir, "trial_*", "trial.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        values = (data.get("hyperparameters") or {}).get("values") or {}
        score = data.get("score")
        trials.append({"trial_id": str(data.get("trial_id", os.path.basename(os.path.dirname(path)))),
                       "status": data.get("status", ""),
                       "score": float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None,
                       "hyperparameters": {k: v for k, v in values.items() if not k.startswith("tuner/")}})
    return trials


def _value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def table_rows(trials: list[dict]) -> tuple[list[str], list[list[str]]]:
    names = []
    for t in trials:
        names += [k for k in t["hyperparameters"] if k not in names]
    header = ["trial", "status", "objective", *names]
    rows = [[t["trial_id"], t["status"], "" if t["score"] is None else f"{t['score']:.4f}",
             *[_value(t["hyperparameters"][n]) if n in t["hyperparameters"] else "" for n in names]]
            for t in trials]
    return header, rows


def text_table(trials: list[dict], best_id: str | None = None) -> str:
    """The trials as an aligned plain-text table (the best marked with *)."""
    header, rows = table_rows(trials)
    rows = [[("*" if r[0] == best_id else " ") + r[0], *r[1:]] for r in rows]
    header = [" " + header[0], *header[1:]]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows])


def write(tune_dir: str, project_dir: str, best: dict | None, direction: str) -> str:
    """Writes trials.csv, plots/trials.png and report.html into tune_dir; returns the text table."""
    from dprime_tf import plots
    trials = read_trials(project_dir)
    objective = (best or {}).get("objective", "objective")
    header, rows = table_rows(trials)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(os.path.join(tune_dir, "trials.csv"), out.getvalue())
    plots.plot_tuning(os.path.join(tune_dir, "plots", "trials.png"), trials, objective, direction, best)
    best_id = (best or {}).get("trial_id")
    cells = "".join(
        "<tr" + (" class='best'" if r[0] == best_id else "") + ">" + "".join(f"<td>{html.escape(c)}</td>" for c in r)
        + "</tr>" for r in rows)
    settings = "".join(f"<li><code>{html.escape(k)} = {html.escape(_value(v))}</code></li>"
                       for k, v in (best or {}).get("hyperparameters", {}).items())
    best_html = (f"<p>Best: trial {html.escape(str(best_id))}, {html.escape(objective)} "
                 f"{best['score']:.4f} ({direction}imize)</p><ul>{settings}</ul>"
                 f"<p>Flagfile: <code>{html.escape(str(best.get('flagfile', '')))}</code></p>") if best else ""
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Tuning: "
            f"{html.escape(os.path.basename(os.path.abspath(tune_dir)))}</title><style>"
            "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:1100px;margin:1.5em auto;"
            "padding:0 1em}"
            "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em}"
            "th{background:#f5f5f5}tr.best{background:#fff4cc}img{max-width:100%}</style></head><body>"
            f"<h1>Tuning: {html.escape(os.path.basename(os.path.abspath(tune_dir)))}</h1>"
            f"<p style='color:#666'>{html.escape(os.path.abspath(tune_dir))}: {len(trials)} trial(s)</p>{best_html}"
            "<img src='plots/trials.png' alt='objective per trial'>"
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells}</table>"
            "</body></html>\n")
    atomic_write(os.path.join(tune_dir, "report.html"), page)
    return text_table(trials, best_id)


def main(argv=None):
    import sys
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or not os.path.isdir(args[0]):
        print("usage: python -m dprime_tf.tuning_report <tune_dir> [project (default dprime)]", file=sys.stderr)
        return 2
    tune_dir = args[0]
    best = None
    if os.path.exists(os.path.join(tune_dir, "best.json")):
        with open(os.path.join(tune_dir, "best.json")) as f:
            best = json.load(f)
    direction = "min" if best and "perplexity" in best.get("objective", "") else "max"
    print(write(tune_dir, os.path.join(tune_dir, args[1] if len(args) > 1 else "dprime"), best, direction))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
