"""dprime-show: draw, diff and list genotypes; DARTS `Genotype(...)` strings parsed without eval."""

import os
import subprocess
import sys

import pytest

from dprime_tf.genotype import GenotypeError
from dprime_tf.show import diff_lines, load_any, parse_darts_string
from dprime_tf.spaces.cnn.genotype import DARTS_V2
from dprime_tf.spaces.rnn.genotype import DARTS_V2 as RNN_DARTS_V2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As published in DARTS's genotypes.py (Liu et al., 2019).
DARTS_V2_STRING = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
RNN_DARTS_V2_STRING = (
    "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), "
    "('tanh', 3), ('relu', 5)], concat=range(1, 9))")


def show(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "dprime_tf.show", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_parses_the_published_darts_v2_string():
    space, genotype = parse_darts_string(DARTS_V2_STRING)
    assert space.name == "cnn" and genotype == DARTS_V2
    space, genotype = parse_darts_string(DARTS_V2_STRING.replace("[2, 3, 4, 5]", "range(2, 6)"))
    assert genotype == DARTS_V2
    space, genotype = parse_darts_string(RNN_DARTS_V2_STRING)
    assert space.name == "rnn" and genotype == RNN_DARTS_V2
    # a line of genotypes.py, in a file
    assert load_any("DARTS_V2")[1] == DARTS_V2 and load_any("rnn:DARTS_V2")[1] == RNN_DARTS_V2


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/dprime_show_pwned')",
    "Genotype(normal=__import__('os').system('touch /tmp/dprime_show_pwned'))",
    "Genotype(normal=[('sep_conv_3x3', 0)] * 8, reduce=[])",
    "Genotype(colour='blue')",
    "Genotype(normal=[('sep_conv_3x3', 0)",
    "hello world",
])
def test_rejects_what_is_not_a_genotype(text):
    with pytest.raises(GenotypeError):
        load_any(text)
    assert not os.path.exists("/tmp/dprime_show_pwned")


def test_diff_names_the_changed_edges():
    lines = diff_lines(*load_any("DARTS_V1")[:2], *load_any(DARTS_V2_STRING)[:2])
    assert "normal cell: 3 of 8 edges differ" in lines
    assert "  node 3: from node 0: skip_connect -> dil_conv_3x3" in lines
    assert lines[-1] == "5 of 16 edges differ"
    assert diff_lines(*load_any("DARTS_V2")[:2], *load_any(DARTS_V2_STRING)[:2])[-1] == "identical"


def test_cli_draws_diffs_lists_and_rejects_in_one_line(tmp_path):
    proc = show("draw", DARTS_V2_STRING, f"--plot_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    for kind in ("normal", "reduce"):
        assert (tmp_path / f"cell_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    genotype_file = tmp_path / "genotypes.py"
    genotype_file.write_text(f"DARTS_V2 = {RNN_DARTS_V2_STRING}\n")
    proc = show("draw", str(genotype_file), f"--plot_dir={tmp_path}", "--prefix=rnn")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rnn_recurrent.png").read_bytes()[:4] == b"\x89PNG"
    proc = show("diff", "DARTS_V1", DARTS_V2_STRING)
    assert proc.returncode == 0 and "5 of 16 edges differ" in proc.stdout, proc.stderr
    proc = show("list")
    assert proc.returncode == 0 and "cnn:DARTS_V2" in proc.stdout and "rnn:DARTS_V1" in proc.stdout
    for args in (("draw", "Genotype(normal=__import__('os'))"), ("draw", "not a genotype"), ("frobnicate",),
                 ("draw", str(tmp_path / "cell_normal.png")), ("diff", "DARTS_V2", "rnn:DARTS_V2")):
        proc = show(*args)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_show_imports_beside_the_other_commands():
    """absl flags are process-global: dprime-show must not define a flag that the commands the
    tests and the Python API import beside it (search and tune, or train) define too."""
    for code in ("import dprime_tf.search, dprime_tf.tune, dprime_tf.show",
                 "import dprime_tf.show, dprime_tf.train", "import dprime_tf.show, dprime_tf.evaluate"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.returncode == 0, (code, proc.stderr[-2000:])
