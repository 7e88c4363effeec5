"""What a search space provides to the search, training and evaluation jobs.

The jobs (dprime_tf.search_job, ...) and `BilevelSearch` know only this
interface; dprime_tf.spaces.cnn (DARTS's convolutional cells on images) and
dprime_tf.spaces.rnn (DARTS's recurrent cell on text) implement it. Adding a
space means one new module with a `SearchSpace` subclass and one
`register(...)` line in dprime_tf/spaces/__init__.py.

The supernet a space builds is a Keras model with:
- `alphas`: the architecture variables (non-trainable; stepped by the alpha optimizer);
- `loss_terms(data, training, stream)`: {"loss_sum", "count", optional "correct",
  optional "penalty"} of one batch (the searcher divides by the global count);
- `mixing_weights()`: {kind: softmax(alpha) array} per alpha matrix (history, plots);
- `genotype()`: the discrete architecture now; `discretize_kwargs()`: how PRIME's
  proximity penalty discretizes its alphas (dprime_tf.prime);
- `metric`: "accuracy" or "perplexity".
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable


# Search settings whose default depends on the space (None in a SearchConfig: the space's
# value), and their values where a space gives none (DARTS's CNN search, SPEC section 3).
SEARCH_DEFAULTS = {"batch_size": 64, "learning_rate": 0.025, "learning_rate_min": 0.001, "momentum": 0.9,
                   "weight_decay": 3e-4, "grad_clip": 5.0, "arch_learning_rate": 3e-4, "arch_weight_decay": 1e-3,
                   "fi_ewma_beta": 0.2}
SPACE_DEFAULTED = tuple(SEARCH_DEFAULTS)


@dataclasses.dataclass
class SearchData:
    """The data of one search, loaded and checked before the run directory exists.

    `weight_stream(start_batch)` and `alpha_stream(start_batch)` return infinite
    tf.data streams that start at batch `start_batch` (a resumed run continues
    each stream where it stopped); `eval_data` is finite (validation).
    """

    name: str
    steps_per_pass: int  # weight-stream batches in one epoch at most
    weight_stream: Callable[[int], Any]
    alpha_stream: Callable[[int], Any]
    eval_data: Any
    network_args: dict  # what build_supernet needs from the data (classes, image size, vocabulary)
    summary: dict  # sizes and names for summary.json
    extra: Any = None  # anything else the space keeps for its hooks (e.g. the corpus)


class SearchSpace(abc.ABC):
    """One search space: data, supernet, genotype and the artifacts of its runs."""

    name: str  # "cnn", "rnn": the key in the registry and in summary.json
    metric: str  # "accuracy" or "perplexity"
    genotype_kinds: tuple  # the cells of its genotypes ("normal", "reduce") / ("recurrent",)
    search_flags_module: str | None = None  # module defining the search flags only this space has
    # The values this space gives to search settings the command line does not set
    # (the flags' own defaults are the CNN search's).
    search_defaults: dict = {}
    arch_beta_1: float = 0.5  # alpha Adam's beta_1
    # Whether the search keeps the genotype of the epoch with the best validation
    # loss (genotype.json; the last epoch's is genotype_last.json), as the official
    # recurrent search does; otherwise genotype.json is the last epoch's.
    keeps_best_validation_genotype: bool = False

    # The values this space gives to training settings left unset (dprime_tf.train_job).
    train_defaults: dict = {}

    # -- datasets and genotypes ---------------------------------------------------
    @abc.abstractmethod
    def accepts_dataset(self, spec: str) -> bool:
        """Whether a --dataset value names data of this space."""

    def check_dataset(self, spec: str) -> None:
        """A one-line UserError if `spec` cannot name data of this space (no loading)."""

    @abc.abstractmethod
    def genotype_class(self):
        """The genotype class (from_dict / to_dict / load / to_json) of this space."""

    def is_genotype(self, data: dict) -> bool:
        """Whether parsed genotype JSON belongs to this space."""
        return isinstance(data, dict) and self.genotype_kinds[0] in data

    # -- search -------------------------------------------------------------------
    def resolve_search_config(self, cfg):
        """`cfg` with the settings left unset (None) filled with this space's defaults."""
        values = {**SEARCH_DEFAULTS, **self.search_defaults}
        return dataclasses.replace(cfg, **{k: v for k, v in values.items() if getattr(cfg, k) is None})

    def search_checks(self, cfg) -> list[tuple[bool, str]]:
        """(condition, one-line message) checks of the settings only this space has."""
        return []

    @abc.abstractmethod
    def load_search_data(self, cfg, replicas: int) -> SearchData:
        """Loads and splits the search data (weight / alpha streams, validation); UserError if unusable."""

    @abc.abstractmethod
    def build_supernet(self, cfg, data: SearchData):
        """The supernet (see the module docstring), built inside the strategy's scope."""

    def before_search(self, job) -> dict:
        """Runs before the first step (job: dprime_tf.search_job.SearchJob); returns summary entries."""
        return {}

    def after_search(self, job) -> dict:
        """Runs after the last step; returns summary entries."""
        return {}

    def alpha_arrays(self, net) -> dict:
        """The alphas as named arrays (alphas.npz)."""
        return {f"alpha_{kind}": a.numpy() for kind, a in zip(self.genotype_kinds, net.alphas)}

    @abc.abstractmethod
    def draw_genotype(self, plot_dir: str, genotype) -> None:
        """Draws the genotype's cells into plot_dir (cell_<kind>.png)."""

    # -- final networks -------------------------------------------------------------
    def train_checks(self, cfg) -> list[tuple[bool, str]]:
        """(condition, one-line message) checks of the training settings only this space has."""
        return []

    @abc.abstractmethod
    def train(self, cfg, genotype, strategy, flags_text, extra_callbacks) -> dict:
        """Trains (or resumes) the final network of `genotype`; returns the run's summary."""

    def genotype_lines(self, genotype) -> list[str]:
        """One line per cell of the genotype: `<kind>: op<-input ...`."""
        return [f"{kind}: " + " ".join(f"{op}<-{i}" for op, i in getattr(genotype, kind))
                for kind in self.genotype_kinds]

    def format_metric(self, value: float) -> str:
        return f"{value:.2f}" if self.metric == "perplexity" else f"{value:.4f}"
