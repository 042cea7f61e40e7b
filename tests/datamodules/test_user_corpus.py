"""The recipe "a new corpus is one class" (docs/architecture.md): a corpus defined outside the
package, selected by import path, trains and tests through the CLI."""

from __future__ import annotations

from pathlib import Path

from metaspeech.cli.main import main
from metaspeech.datamodules import EpisodicDataModule
from metaspeech.datamodules.manifest import Utterance, read_manifest

REPO = Path(__file__).resolve().parents[2]
LOADED: list[int] = []


class FolderOfSpeakers(EpisodicDataModule):
    """A user's corpus: only ``load_rows`` is written; splitting, validation, features and episodes are inherited.

    Here the rows come from a manifest in ``folder`` with its ``split`` labels dropped, so speakers are
    assigned to meta-train / meta-val / meta-test by the base class's stable hash.
    """

    def __init__(self, folder: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def load_rows(self) -> list[Utterance]:
        rows = [Utterance(r.audio_filepath, r.text, r.speaker, r.duration, {"id": r.utterance_id})
                for r in read_manifest(next(Path(self.folder).glob("*/manifest.jsonl")))]
        LOADED.append(len(rows))
        return rows


def test_a_corpus_defined_outside_the_package_trains_and_tests(corpus_root, tmp_path, tiny_cli_args) -> None:
    model = [a for a in tiny_cli_args("fomaml.yaml") if a.startswith("--model.recognizer")]
    common = [
        "--config", str(REPO / "configs/fomaml.yaml"), f"--data={__name__}.FolderOfSpeakers",
        f"--data.folder={corpus_root}", f"--data.cache_dir={tmp_path / 'cache'}", "--data.k_shot=2", "--data.q_query=2",
        "--data.tasks_per_batch=2", "--data.eval_pool_size=3", "--data.eval_size=3",
        "--data.val_fraction=0.2", "--data.test_fraction=0.2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    ]
    assert main(["fit", *common, *model, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2",
                 "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null"]) == 0
    checkpoint = sorted(tmp_path.rglob("*.ckpt"))[-1]
    assert main(["test", *common, "--model.test_shots=[1,3]", "--model.test_steps=[0,1]", f"--model.results_dir={tmp_path}",
                 f"--ckpt_path={checkpoint}"]) == 0
    assert LOADED and (tmp_path / "adaptation_fomaml.json").is_file()
