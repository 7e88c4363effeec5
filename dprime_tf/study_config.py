"""A study's settings (`Study`: the methods x seeds grid, the search and training
settings every trial shares), the method presets and their checks, without
TensorFlow: `python -m dprime_tf.study` rejects bad input before TensorFlow's
start-up. dprime_tf.studies (which runs the trials) re-exports these names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from dprime_tf import spaces
from dprime_tf.atomic import atomic_write_json
from dprime_tf.errors import UserError
from dprime_tf.search_config import SearchConfig
from dprime_tf.train_job import TrainConfig

# The method presets: the switches each sets (SPEC sections 4-5). Every other search
# setting is the study's. Fixed schedules take an alpha step after every weight step
# (schedfreq 1, as first-order DARTS); the dynamic ones use the paper's schedfreq 10.
METHODS = {
    "darts": dict(schedule="fixed", split="half", reg="none", schedfreq=1),
    "prime": dict(schedule="dynamic", split="dynamic", reg="prox", schedfreq=10),
    "dynamic": dict(schedule="dynamic", split="dynamic", reg="none", schedfreq=10),  # the schedule only
    "prox": dict(schedule="fixed", split="half", reg="prox", schedfreq=1),  # the regularizer only
    "admm": dict(schedule="dynamic", split="dynamic", reg="admm", schedfreq=10),  # ADMM instead of prox
}
RANDOM = "random"
# Training settings a study's --train_<name> flags may set (the rest are per trial or the search's).
TRAIN_PER_TRIAL = ("genotype", "dataset", "data_dir", "output_dir", "resume", "seed", "verbose")


def train_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields a study sets for all its trials (its --train_<name> flags)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_PER_TRIAL]


def method_names(methods, baselines, space) -> list[str]:
    """The study's grid values for `method`: search methods, then baselines; UserError if unknown."""
    names = []
    for name in methods:
        if name not in METHODS:
            raise UserError(f"--methods: unknown method {name!r} (use any of {', '.join(METHODS)})")
        names.append(name)
    published = space.genotype_class().published()
    for name in baselines:
        if name != RANDOM and name not in published:
            raise UserError(f"--baselines: unknown baseline {name!r} (use {RANDOM} or a published genotype of the "
                            f"{space.name} space: {', '.join(published)})")
        names.append(name)
    if not names:
        raise UserError("--methods and --baselines are both empty: nothing to study")
    if len(set(names)) != len(names):
        raise UserError(f"--methods/--baselines name a method twice: {', '.join(names)}")
    return names


@dataclasses.dataclass(frozen=True)
class Study:
    """A study's settings: the grid, and the search and training settings every trial shares."""

    study_dir: str
    methods: tuple[str, ...]  # search methods and baselines (grid values)
    seeds: tuple[int, ...]
    search: SearchConfig
    train: dict  # TrainConfig field -> value (None: the space's default)

    @property
    def space(self) -> spaces.SearchSpace:
        return spaces.for_dataset(self.search.dataset)

    @property
    def metric(self) -> str:
        return "test_" + self.space.metric

    @property
    def direction(self) -> str:
        return "min" if self.space.metric == "perplexity" else "max"

    def grid_name(self) -> str:
        key = json.dumps([list(self.methods), list(self.seeds)])
        return "grid-" + hashlib.sha1(key.encode()).hexdigest()[:10]

    def settings(self) -> dict:
        """What must not change between runs of one study directory (study.json)."""
        search = {k: v for k, v in dataclasses.asdict(self.search).items()
                  if k not in ("output_dir", "resume", "seed", "until_epoch", "verbose", *METHODS["prime"])}
        return {"search": search, "train": dict(self.train)}

    def trial_dir(self, method: str, seed: int) -> str:
        return os.path.join(self.study_dir, "trials", method, f"seed{seed}")

    def search_config(self, method: str, seed: int) -> SearchConfig:
        return dataclasses.replace(self.search, **METHODS[method], seed=seed,
                                   output_dir=os.path.join(self.trial_dir(method, seed), "search"))

    def train_config(self, genotype: str, method: str, seed: int) -> TrainConfig:
        values = {k: v for k, v in self.train.items() if v is not None}
        values.setdefault("image_size", self.search.image_size)
        return TrainConfig(genotype=genotype, dataset=self.search.dataset, data_dir=self.search.data_dir,
                           seed=seed, output_dir=os.path.join(self.trial_dir(method, seed), "train"),
                           verbose=self.search.verbose, **values)


def check_settings(study: Study) -> None:
    """Writes study.json on a new study; on an existing one, a UserError if the settings differ."""
    path = os.path.join(study.study_dir, "study.json")
    settings = json.loads(json.dumps(study.settings(), default=str))
    if os.path.exists(path):
        try:
            with open(path) as f:
                recorded = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is unreadable ({e}): restore it, or start a new --study_dir") from None
        changed = [f"{part}.{k}: {recorded.get(part, {}).get(k)!r} -> {v!r}"
                   for part in ("search", "train") for k, v in settings[part].items()
                   if recorded.get(part, {}).get(k) != v]
        if changed:
            raise UserError(f"--study_dir {study.study_dir} holds a study with other settings ({'; '.join(changed[:4])}"
                            f"{' ...' if len(changed) > 4 else ''}): rerun it with its own settings (only --methods, "
                            "--baselines and --seeds may change), or choose another --study_dir")
        return
    os.makedirs(study.study_dir, exist_ok=True)
    atomic_write_json(path, settings)


# -- one trial -----------------------------------------------------------------------
