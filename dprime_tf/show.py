"""python -m dprime_tf.show (dprime-show): look at genotypes without TensorFlow.

    dprime-show list                                   # the published genotypes it knows
    dprime-show draw DARTS_V2                          # cell_normal.png, cell_reduce.png in --plot_dir
    dprime-show draw runs/search-X                     # a run directory, a genotype.json, JSON text
    dprime-show draw "Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)"
    dprime-show draw DARTS_V2 --space=rnn              # the published recurrent cell
    dprime-show diff DARTS_V1 runs/search-X/genotype.json   # which edges and ops changed

A genotype is: a published name (DARTS_V1, DARTS_V2, DARTS; the CNN cell unless
--space=rnn, or written cnn:DARTS_V2 / rnn:DARTS_V2), our JSON (a file, a run
directory holding genotype.json, or the text itself), or a DARTS-style
`Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`
(or `Genotype(recurrent=[...], concat=...)`) string as published in papers and
DARTS's genotypes.py, given as text or in a file. The string is parsed as
literals only (lists, tuples, strings, numbers and `range(a, b)`), never
evaluated. `diff` exits 0 whether or not the genotypes differ; a bad
genotype is one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import ast
import json
import os

from absl import flags

from dprime_tf.cli import run_main
from dprime_tf.errors import UserError
from dprime_tf.genotype import GenotypeError

FLAGS = flags.FLAGS
flags.DEFINE_string("plot_dir", ".", "draw: where to write the cell diagrams (PNG).")
flags.DEFINE_string("prefix", "cell", "draw: file names are <prefix>_<cell>.png (cell_normal.png, ...).")
flags.DEFINE_enum("space", None, ["cnn", "rnn"], "The space of a published name (default cnn); "
                  "files and strings say their own.")

COMMANDS = ("list", "draw", "diff")
MAX_TEXT = 100_000


# -- reading genotypes -----------------------------------------------------------
def _spaces():
    from dprime_tf import spaces
    return spaces


def _literal(node):
    """A literal of a DARTS genotype string: ast.literal_eval's literals plus range(a[, b[, c]])."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 3:
        args = [_literal(a) for a in node.args]
        if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            return list(range(*args))
        raise ValueError("range() takes integers")
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    return ast.literal_eval(node)


_FIELDS = {4: ("normal", "normal_concat", "reduce", "reduce_concat"), 2: ("recurrent", "concat")}


def parse_darts_string(text: str):
    """(space, genotype) of a DARTS-style `Genotype(...)` string, parsed without eval."""
    text = text.strip()
    short = text if len(text) <= 60 else text[:57] + "..."
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise GenotypeError(f"not a genotype: cannot parse {short!r} ({e.msg})") from None
    name = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else \
        node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
    if name != "Genotype":
        raise GenotypeError(f"not a genotype: expected Genotype(normal=[...], reduce=[...], ...) or "
                            f"Genotype(recurrent=[...], concat=...), got {short!r}")
    values = {}
    try:
        if node.args:
            fields = _FIELDS.get(len(node.args))
            if fields is None:
                raise GenotypeError(f"not a genotype: Genotype() takes 4 (CNN) or 2 (recurrent) fields, "
                                    f"got {len(node.args)} positional ones")
            values.update(zip(fields, (_literal(a) for a in node.args)))
        for kw in node.keywords:
            if kw.arg is None:
                raise GenotypeError("not a genotype: **arguments are not literals")
            values[kw.arg] = _literal(kw.value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        raise GenotypeError(f"not a genotype: Genotype(...) may only hold literals (lists of (op, input) "
                            f"pairs and range(a, b)), got {short!r}") from None
    return _from_dict(values, "the Genotype string")


def _from_dict(data, where: str):
    spaces = _spaces()
    for space in spaces.registered():
        if space.is_genotype(data):
            unknown = sorted(set(data) - set(_FIELDS[4] if space.name == "cnn" else _FIELDS[2]))
            if unknown:
                raise GenotypeError(f"{where}: unknown field(s) {', '.join(unknown)}")
            return space, space.genotype_class().from_dict(data)
    keys = ", ".join(sorted(map(str, data))) if isinstance(data, dict) else type(data).__name__
    raise GenotypeError(f"not a genotype: {where} has neither normal/reduce cells nor a recurrent cell ({keys})")


def load_any(spec: str, space_name: str | None = None):
    """(space, genotype, label) of a published name, a JSON file / run directory / text, or
    a DARTS `Genotype(...)` string (text or file)."""
    spaces = _spaces()
    text = str(spec).strip()
    if not text:
        raise GenotypeError("not a genotype: empty")
    label = text if len(text) <= 40 else text[:37] + "..."
    prefix, _, rest = text.partition(":")
    if prefix in ("cnn", "rnn") and rest and not os.path.exists(text):
        space_name, text = prefix, rest
    if "Genotype" in text and "(" in text and not os.path.exists(text):
        space, genotype = parse_darts_string(text)
        return space, genotype, label
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"not a genotype: invalid JSON ({e.msg} at column {e.colno})") from None
        space, genotype = _from_dict(data, "the JSON")
        return space, genotype, label
    space = spaces.get(space_name or "cnn")
    published = space.genotype_class().published()
    if text in published:
        return space, published[text], f"{space.name}:{text}"
    path = os.path.join(text, "genotype.json") if os.path.isdir(text) else text
    if not os.path.isfile(path):
        names = ", ".join(sorted(published))
        raise GenotypeError(f"not a genotype: {label!r} is no published name ({names}), file, run directory "
                            "with genotype.json, JSON text or Genotype(...) string")
    try:
        with open(path) as f:
            content = f.read(MAX_TEXT + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise GenotypeError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if len(content) > MAX_TEXT:
        raise GenotypeError(f"not a genotype: {path} is larger than {MAX_TEXT:,} characters")
    if "Genotype(" in content:
        start = content.index("Genotype(")
        space, genotype = parse_darts_string(_call_text(content[start:]))
        return space, genotype, label
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise GenotypeError(f"not a genotype: {path} is neither genotype JSON nor a Genotype(...) string "
                            f"({e.msg} at line {e.lineno})") from None
    try:
        space, genotype = _from_dict(data, path)
    except GenotypeError as e:
        raise GenotypeError(str(e) if str(e).startswith(path) or path in str(e) else f"{path}: {e}") from None
    return space, genotype, label


def _call_text(text: str) -> str:
    """The first balanced `Genotype(...)` in `text` (e.g. a line of DARTS's genotypes.py)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text


# -- what the commands print --------------------------------------------------------
def _input_name(space, index: int) -> str:
    if space.name == "cnn":
        return ("c_{k-2}", "c_{k-1}")[index] if index < 2 else f"node {index - 2}"
    return "s0" if index == 0 else f"s{index}"


def _nodes(space, gene):
    """{node label: [(op, input), ...]} of one cell."""
    out = {}
    for k, (op, inp) in enumerate(gene):
        node = f"node {k // 2}" if space.name == "cnn" else f"s{k + 1}"
        out.setdefault(node, []).append((op, inp))
    return out


def diff_lines(space_a, a, space_b, b, label_a="A", label_b="B") -> list[str]:
    """What differs between two genotypes, cell by cell and node by node."""
    if space_a.name != space_b.name:
        raise UserError(f"cannot diff a {space_a.name} genotype with a {space_b.name} genotype")
    space = space_a
    lines, changed_total, edges_total = [f"--- {label_a}", f"+++ {label_b}"], 0, 0
    for kind in space.genotype_kinds:
        nodes_a, nodes_b = _nodes(space, getattr(a, kind)), _nodes(space, getattr(b, kind))
        cell_lines, changed = [], 0
        for node in sorted(set(nodes_a) | set(nodes_b), key=lambda n: int(n.split()[-1].lstrip("s"))):
            ea, eb = list(nodes_a.get(node, [])), list(nodes_b.get(node, []))
            edges_total += max(len(ea), len(eb))
            for edge in list(ea):
                if edge in eb:
                    ea.remove(edge)
                    eb.remove(edge)
            for op_a, inp in list(ea):  # same input, another op
                match = next((e for e in eb if e[1] == inp), None)
                if match:
                    ea.remove((op_a, inp))
                    eb.remove(match)
                    cell_lines.append(f"  {node}: from {_input_name(space, inp)}: {op_a} -> {match[0]}")
                    changed += 1
            for (op_a, inp_a), (op_b, inp_b) in zip(ea, eb):
                cell_lines.append(f"  {node}: {op_a} from {_input_name(space, inp_a)} -> "
                                  f"{op_b} from {_input_name(space, inp_b)}")
                changed += 1
            for op, inp in ea[len(eb):]:
                cell_lines.append(f"  {node}: - {op} from {_input_name(space, inp)}")
                changed += 1
            for op, inp in eb[len(ea):]:
                cell_lines.append(f"  {node}: + {op} from {_input_name(space, inp)}")
                changed += 1
        concat = "concat" if space.name == "rnn" else f"{kind}_concat"
        ca, cb = getattr(a, concat), getattr(b, concat)
        if ca != cb:
            cell_lines.append(f"  output: concat {list(ca)} -> {list(cb)}")
        n = len(getattr(a, kind))
        lines.append(f"{kind} cell: {'same' if not cell_lines else f'{changed} of {n} edges differ'}")
        lines += cell_lines
        changed_total += changed
    lines.append("identical" if lines[2:] == [f"{k} cell: same" for k in space.genotype_kinds]
                 else f"{changed_total} of {edges_total} edges differ")
    return lines


def draw(space, genotype, output_dir: str, prefix: str) -> list[str]:
    """Draws each cell to <output_dir>/<prefix>_<kind>.png; returns the paths."""
    from dprime_tf import plots
    paths = []
    for kind in space.genotype_kinds:
        path = os.path.join(output_dir, f"{prefix}_{kind}.png")
        if space.name == "cnn":
            plots.plot_cell(path, getattr(genotype, kind), getattr(genotype, f"{kind}_concat"), f"{kind} cell")
        else:
            plots.plot_recurrent_cell(path, genotype, "recurrent cell")
        paths.append(path)
    return paths


def list_lines() -> list[str]:
    lines = []
    for space in _spaces().registered():
        for name, genotype in sorted(space.genotype_class().published().items()):
            alias = next((n for n, g in space.genotype_class().published().items() if g == genotype and n != name
                          and name == "DARTS"), None)
            lines.append(f"{space.name}:{name}" + (f" (= {space.name}:{alias})" if alias else ""))
            lines += [f"  {line}" for line in space.genotype_lines(genotype)]
    return lines


def main(argv):
    args = argv[1:]
    if not args or args[0] not in COMMANDS:
        raise UserError(f"give a command: {', '.join(COMMANDS)} (e.g. dprime-show draw DARTS_V2; see --help)")
    command, args = args[0], args[1:]
    want = {"list": 0, "draw": 1, "diff": 2}[command]
    if len(args) != want:
        usage = {"list": "dprime-show list", "draw": "dprime-show draw GENOTYPE",
                 "diff": "dprime-show diff GENOTYPE_A GENOTYPE_B"}[command]
        raise UserError(f"{command} takes {want} genotype(s), got {len(args)}: {usage}")
    if command == "list":
        print("\n".join(list_lines()))
        return
    loaded = [load_any(a, FLAGS.space) for a in args]
    if command == "draw":
        space, genotype, label = loaded[0]
        out = os.path.abspath(FLAGS.plot_dir)
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"--plot_dir {out} is a file, not a directory")
        print(f"{label} ({space.name} space)")
        print("\n".join(f"  {line}" for line in space.genotype_lines(genotype)))
        print(json.dumps(genotype.to_dict()))
        for path in draw(space, genotype, out, FLAGS.prefix):
            print(f"wrote {path}")
        return
    (sa, a, la), (sb, b, lb) = loaded
    print("\n".join(diff_lines(sa, a, sb, b, la, lb)))


def console_main():
    """The `dprime-show` console script: `python -m dprime_tf.show`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)
