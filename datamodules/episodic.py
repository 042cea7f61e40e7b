"""``EpisodicDataModule``: any corpus -> speaker-task episodes for Lightning.

Subclasses only say where the rows come from (:meth:`load_rows`) and, if the
corpus has no ``split`` label, which speakers are meta-val / meta-test. The
base class does the rest, identically for every corpus:

1. validate rows (bad audio, empty or out-of-vocabulary transcripts) per ``on_bad_input``;
2. build the character tokenizer from the meta-train transcripts;
3. compute features once and cache them on disk (keyed by feature config and files);
4. meta-train: :class:`SpeakerEpisodeSampler` meta-batches of T tasks (k support + q query);
5. meta-val / meta-test: per held-out task an adaptation pool and a disjoint evaluation set.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from metaspeech.datamodules.collate import MetaBatchCollator, collate_evaluation_task
from metaspeech.datamodules.dataset import UtteranceDataset
from metaspeech.datamodules.manifest import Utterance
from metaspeech.datamodules.sampler import EvaluationTask, SpeakerEpisodeSampler, make_evaluation_tasks
from metaspeech.datamodules.seen_speakers import SEEN_GROUP, SeenSpeakerTask, hold_out_seen_sentences
from metaspeech.datamodules.validation import check_task_sizes, validate_utterances
from metaspeech.engine.batch import EvaluationBatch
from metaspeech.engine.config import check_at_least
from metaspeech.engine.randomness import unit_interval
from metaspeech.errors import ConfigError, DataError
from metaspeech.speech.audio import load_audio
from metaspeech.speech.features import FeatureCache, FeatureConfig
from metaspeech.speech.text import normalize_text
from metaspeech.speech.tokenizer import CharTokenizer, Tokenizer
from metaspeech.training.checkpoint_io import read_metaspeech_section

SPLITS = ("train", "val", "test")


class EvaluationTaskDataset(Dataset):
    """One item per held-out task: an :class:`EvaluationBatch` (pool + evaluation set)."""

    def __init__(self, dataset: UtteranceDataset, tasks: list[Any]) -> None:
        self.dataset = dataset
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> EvaluationBatch:
        return collate_evaluation_task(self.dataset, self.tasks[index])


FEATURE_THREADS = 2
"""Threads that decode audio and compute features on a cache miss (torchaudio releases the GIL)."""


class EpisodicDataModule(L.LightningDataModule):
    """Base data module: subclasses implement :meth:`load_rows`.

    Args:
        task_key: manifest label that defines a task (``speaker``, ``accent``, ...).
        k_shot: support utterances per task in meta-training.
        q_query: query utterances per task in meta-training.
        tasks_per_batch: tasks T per meta-batch (per DDP rank).
        batches_per_epoch: meta-batches in one epoch.
        eval_pool_size: adaptation pool per held-out task (>= the largest shot count tested).
        eval_size: evaluation utterances per held-out task (None: all the rest).
        oracle_pool_size: utterances per held-out task for the speaker oracle (the few-shot pool and
            more; the evaluation set starts after them), so the test report can say how much of the
            gap to a speaker-dependent model adaptation closes. 0: no oracle.
        val_fraction / test_fraction: share of speakers held out when rows carry no ``split`` label.
        features: feature extraction settings.
        cache_dir: where features are cached.
        on_bad_input: ``skip`` (warn, naming the files) or ``raise`` for corrupt audio / bad transcripts.
        seen_speakers: training speakers also scored in ``test`` on ``seen_sentences`` held-out sentences
            each (the group "seen speaker, new sentences": the recognizer's error without a speaker
            mismatch); their sentences are removed from meta-training. 0: none. Needs ``task_key: speaker``.
        seen_sentences: held-out utterances per seen speaker.
        tokenizer_from: a metaspeech checkpoint whose tokenizer encodes this corpus, to evaluate a trained
            model on another corpus (``metaspeech test --ckpt_path`` sets it); default: a tokenizer built
            from this corpus's meta-train transcripts.
        num_workers: DataLoader workers.
        seed: seeds episode sampling and held-out splits.
    """

    def __init__(
        self,
        task_key: str = "speaker",
        k_shot: int = 5,
        q_query: int = 5,
        tasks_per_batch: int = 8,
        batches_per_epoch: int = 100,
        eval_pool_size: int = 10,
        eval_size: int | None = None,
        oracle_pool_size: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        features: FeatureConfig | None = None,
        cache_dir: str = "data/cache",
        on_bad_input: str = "skip",
        num_workers: int = 0,
        seed: int = 0,
        seen_speakers: int = 0,
        seen_sentences: int = 4,
        tokenizer_from: str | None = None,
    ) -> None:
        super().__init__()
        for key, value, minimum in (("k_shot", k_shot, 1), ("q_query", q_query, 1), ("tasks_per_batch", tasks_per_batch, 1),
                                    ("batches_per_epoch", batches_per_epoch, 1), ("eval_pool_size", eval_pool_size, 1),
                                    ("eval_size", eval_size, 1), ("oracle_pool_size", oracle_pool_size, 0)):
            check_at_least(f"data.init_args.{key}", value, minimum)
        if on_bad_input not in ("skip", "raise"):
            raise ConfigError(f"data.init_args.on_bad_input must be 'skip' or 'raise', got {on_bad_input!r}")
        self.task_key = task_key
        self.k_shot, self.q_query = k_shot, q_query
        self.tasks_per_batch, self.batches_per_epoch = tasks_per_batch, batches_per_epoch
        self.eval_pool_size, self.eval_size = eval_pool_size, eval_size
        if oracle_pool_size and oracle_pool_size <= eval_pool_size:
            raise ConfigError(
                f"data.init_args.oracle_pool_size ({oracle_pool_size}) must exceed eval_pool_size ({eval_pool_size}): "
                "the oracle fine-tunes on the few-shot pool and more of each speaker (or set it to 0)"
            )
        self.oracle_pool_size = oracle_pool_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.feature_config = features or FeatureConfig()
        self.cache_dir = cache_dir
        self.on_bad_input = on_bad_input
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer_from = tokenizer_from
        if seen_speakers and task_key != "speaker":
            raise ConfigError(f"data.init_args.seen_speakers needs task_key: speaker (got task_key: {task_key})")
        self.seen_speakers, self.seen_sentences = seen_speakers, seen_sentences
        self.seen_tasks: list[EvaluationTask] = []
        self._rows: list[Utterance] | None = None
        self._tokenizer: Tokenizer | None = None
        self.datasets: dict[str, UtteranceDataset] = {}
        self.task_indices: dict[str, dict[str, list[int]]] = {}
        self.train_sampler: SpeakerEpisodeSampler | None = None
        self._resume_state: dict[str, int] | None = None
        self._audio_paths: dict[str, str] | None = None

    # ------------------------------------------------------------ to override
    def load_rows(self) -> list[Utterance]:
        """All utterances of the corpus as manifest rows."""
        raise NotImplementedError

    def prepare_corpus(self) -> None:
        """Create the corpus on disk if needed (runs once, on the main process)."""

    # ------------------------------------------------------------------ rows
    @property
    def rows(self) -> list[Utterance]:
        if self._rows is None:
            self._rows = self.load_rows()
            if not self._rows:
                raise DataError(f"{type(self).__name__} found no utterances; check its path settings")
        return self._rows

    def split_of(self, row: Utterance) -> str:
        """``train``/``val``/``test`` from the row's ``split`` label, else a stable hash of its speaker."""
        split = row.labels.get("split")
        if split in SPLITS:
            return split
        digest = unit_interval(self.seed, row.speaker)
        if digest < self.test_fraction:
            return "test"
        return "val" if digest < self.test_fraction + self.val_fraction else "train"

    # ------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self) -> Tokenizer:
        """Character tokenizer built from the meta-train transcripts (read-only: no audio is touched)."""
        if self._tokenizer is None:
            self._tokenizer = self._checkpoint_tokenizer() if self.tokenizer_from else self.build_tokenizer()
        return self._tokenizer

    def _checkpoint_tokenizer(self) -> Tokenizer:
        saved = read_metaspeech_section(self.tokenizer_from).restore_tokenizer()
        if saved is None:
            raise DataError(f"data.init_args.tokenizer_from={self.tokenizer_from} holds no tokenizer: use a checkpoint of `metaspeech fit`")
        return saved

    def build_tokenizer(self) -> Tokenizer:
        """The corpus's own tokenizer: characters of the meta-train transcripts (subclasses may fix an alphabet)."""
        texts = [normalize_text(r.text) for r in self.rows if self.split_of(r) == "train"]
        if not texts:
            raise DataError(
                f"{type(self).__name__} has no meta-train ('train' split) transcripts to build a tokenizer from: "
                "to evaluate a trained model on this corpus pass --ckpt_path (its tokenizer is used), "
                "or set data.init_args.tokenizer_from=<checkpoint>"
            )
        return CharTokenizer.from_texts(texts)

    @property
    def vocabulary_source(self) -> str:
        return f"the tokenizer of {self.tokenizer_from}" if self.tokenizer_from else "the meta-train vocabulary"

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def feature_dim(self) -> int:
        return self.feature_config.dim

    # ---------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        self.prepare_corpus()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        report = validate_utterances(
            self.rows, allowed_chars=None, resample_to=self.feature_config.sample_rate, on_error=self.on_bad_input
        )
        rows = self._drop_untokenizable(report.kept)
        by_split: dict[str, list[Utterance]] = defaultdict(list)
        for row in rows:
            by_split[self.split_of(row)].append(row)
        by_split["train"], seen = hold_out_seen_sentences(
            by_split["train"], self.seen_speakers, self.seen_sentences, self.eval_pool_size, self.seed
        )
        cache = FeatureCache(Path(self.cache_dir), self.feature_config)
        for split in SPLITS:
            split_rows = by_split.get(split, [])
            extra = [row for task in seen for row in (*task.pool, *task.held_out)] if split == "test" else []
            task_rows, split_rows = split_rows, split_rows + extra
            features, statistics = cache.load_or_compute_with_statistics(
                [r.audio_filepath for r in split_rows],
                lambda path: load_audio(path, self.feature_config.sample_rate),
                num_workers=FEATURE_THREADS,
            )
            self.datasets[split] = UtteranceDataset(
                features=features,
                tokens=[self.tokenizer.encode(normalize_text(r.text)) for r in split_rows],
                texts=[normalize_text(r.text) for r in split_rows],
                ids=[r.utterance_id for r in split_rows],
                statistics=statistics,
            )
            self.task_indices[split] = self._group_by_task(task_rows)
        self.seen_tasks = _seen_evaluation_tasks(seen, first_index=len(by_split.get("test", [])))

    def _drop_untokenizable(self, rows: list[Utterance]) -> list[Utterance]:
        """Transcripts (after :func:`normalize_text`) with characters the tokenizer lacks: policy applies.

        Held-out speakers, or a whole corpus a trained model is tested on, may use characters
        never seen in meta-train (digits, say). Each such row is named, with its characters.
        """
        allowed = self.tokenizer.allowed_chars | {" "}
        kept, bad = [], []
        for row in rows:
            (kept if set(normalize_text(row.text)) <= allowed else bad).append(row)
        unknown = {row.audio_filepath: sorted(set(normalize_text(row.text)) - allowed) for row in bad}
        if bad and self.on_bad_input == "raise":
            path = bad[0].audio_filepath
            raise DataError(
                f"{path}: transcript {normalize_text(bad[0].text)!r} (normalized) has characters {unknown[path]} outside "
                f"{self.vocabulary_source}: fix the transcript, or set data.init_args.on_bad_input=skip to drop such utterances"
            )
        if bad:
            listed = ", ".join(f"{path} {chars}" for path, chars in list(unknown.items())[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            every = sorted({c for chars in unknown.values() for c in chars})
            warnings.warn(
                f"skipped {len(bad)} utterance(s) with characters {every} outside {self.vocabulary_source}: {listed}{more}",
                stacklevel=2,
            )
        return kept

    def _group_by_task(self, rows: list[Utterance]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            groups[str(row.label(self.task_key))].append(index)
        return dict(groups)

    def audio_path(self, utterance_id: str) -> str | None:
        """The audio file of an utterance id (as in evaluation reports), or None if unknown."""
        if self._audio_paths is None:
            self._audio_paths = {}
            for row in self.rows:
                self._audio_paths.setdefault(row.utterance_id, row.audio_filepath)
        return self._audio_paths.get(utterance_id)

    def task_groups(self, split: str = "test") -> dict[str, str]:
        """``task -> group`` for the evaluation tasks of ``split``: "seen accent" / "unseen accent" for
        held-out speakers (when rows carry an ``accent`` label), and in ``test`` the seen-speaker group.

        Why: the decomposition of the error. Cross-accent adaptation is reported separately for
        accents that never occur in meta-training, and training speakers on new sentences show the
        error that is not a speaker mismatch (:mod:`metaspeech.datamodules.seen_speakers`).
        """
        rows = self.rows
        groups: dict[str, str] = {}
        if any("accent" in r.labels for r in rows):
            seen = {r.labels.get("accent") for r in rows if self.split_of(r) == "train"}
            groups = {
                str(r.label(self.task_key)): "seen accent" if r.labels.get("accent") in seen else "unseen accent"
                for r in rows if self.split_of(r) == split
            }
        if split == "test":
            groups.update({task.name: SEEN_GROUP for task in self.seen_tasks})
        return groups

    def task_accents(self, split: str = "test") -> dict[str, str]:
        """``task -> accent`` of the tasks of ``split`` whose rows carry an ``accent`` label: who the accent oracle
        (:meth:`metaspeech.evaluation.oracle.SpeakerOracle.fit_accent`) takes as a task's accent mates."""
        return {str(r.label(self.task_key)): str(r.labels["accent"]) for r in self.rows
                if self.split_of(r) == split and "accent" in r.labels}

    # ---------------------------------------------------------- dataloaders
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        if self.on_bad_input == "raise":
            self._refuse_short_tasks()
        sampler = SpeakerEpisodeSampler(
            self.task_indices["train"], self.k_shot, self.q_query, self.tasks_per_batch,
            self.batches_per_epoch, seed=self.seed, rank=rank, world_size=world, task_key=self.task_key,
        )
        if self._resume_state is not None:
            sampler.load_state_dict(self._resume_state)
            self._resume_state = None
        self.train_sampler = sampler
        return EpisodeLoader(
            self.datasets["train"], batch_sampler=sampler, collate_fn=MetaBatchCollator.for_sampler(sampler),
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def _refuse_short_tasks(self) -> None:
        """``on_bad_input: raise``: a meta-train task with fewer than k_shot + q_query utterances stops the run.

        (``skip`` leaves such tasks out of meta-training with a warning that names them: the sampler's.)
        """
        counts = {task: len(indices) for task, indices in self.task_indices["train"].items()}
        short = check_task_sizes(counts, self.k_shot + self.q_query, self.task_key)
        if short.too_small:
            raise DataError(
                f"meta-train {short.message} (k_shot={self.k_shot}, q_query={self.q_query}), "
                "or set data.init_args.on_bad_input=skip to leave such tasks out of meta-training"
            )

    def _evaluation_loader(self, split: str) -> DataLoader:
        rank, world = self._rank_and_world()
        tasks = make_evaluation_tasks(
            self.task_indices[split], self.eval_pool_size, self.eval_size, seed=self.seed, rank=rank, world_size=world,
            task_key=self.task_key, oracle_pool_size=self.oracle_pool_size if split == "test" else 0,
        )
        if split == "test":
            tasks += self.seen_tasks[rank::world]
        return DataLoader(EvaluationTaskDataset(self.datasets[split], tasks), batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    # ------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """Where the episode sampler stands: saved in every checkpoint for exact resume."""
        trainer = self.trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._resume_state = dict(state)


class EpisodeLoader(DataLoader):
    """The meta-training DataLoader, resumable mid-epoch through its data module.

    Lightning treats a loader with ``state_dict`` / ``load_state_dict`` as resumable (and
    otherwise warns that a mid-epoch resume is unreliable). This one is: the sampler's
    position is saved and restored by :meth:`EpisodicDataModule.state_dict`, from the
    trainer's count of *consumed* batches, which stays right with prefetching workers.
    So the loader's own state is empty.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore here: the data module restored the sampler."""


def _seen_evaluation_tasks(tasks: list[SeenSpeakerTask], first_index: int) -> list[EvaluationTask]:
    """Evaluation tasks over the seen-speaker rows appended to the test dataset from ``first_index`` on."""
    result, index = [], first_index
    for task in tasks:
        pool = list(range(index, index + len(task.pool)))
        index += len(task.pool)
        held_out = list(range(index, index + len(task.held_out)))
        index += len(task.held_out)
        result.append(EvaluationTask(name=task.name, pool=pool, evaluation=held_out))
    return result
