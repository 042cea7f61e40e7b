"""The protocol-speed benchmark on the tiny corpus: every phase is timed and both adaptation modes agree."""

from __future__ import annotations

from benchmarks import protocol_speed
from metaspeech.algorithms import FOMAML
from metaspeech.evaluation.oracle import SpeakerOracle


def test_phases_are_timed_and_nested_adaptation_gives_the_per_s_transcripts(tiny_data, tiny_module, tiny_trainer) -> None:
    data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), oracle=SpeakerOracle(max_steps=4, eval_every=2))
    tiny_trainer(max_steps=10).fit(module, datamodule=data)  # a recognizer that emits more than blanks
    data.setup("test")
    item = next(iter(data.test_dataloader()))
    row = protocol_speed.time_speaker(module, item, shots=[1, 3], steps=[0, 1, 3])
    assert row["same_transcripts"] is True
    assert set(row["seconds"]) == {"adapt per s", "adapt nested", "transcribe", "oracle"}
    assert all(seconds > 0.0 for seconds in row["seconds"].values())
    table = protocol_speed.markdown([row, row]).splitlines()
    assert table[0] == "| phase | s per speaker |" and len(table) == 2 + 4 + 2
    assert table[-1].startswith("| protocol, nested |")
