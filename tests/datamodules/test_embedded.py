"""Tests for the embedded eSpeak NG corpus generator.

Generation tests use a 7-speaker, 3-utterance preset so the file runs in seconds;
the ``tiny`` preset itself is checked only for its shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metaspeech.datamodules.embedded import PRESETS, CorpusPreset, SpeakerSpec, generate_corpus, make_speakers
from metaspeech.datamodules.embedded import generate as generate_module
from metaspeech.datamodules.embedded.channel import (
    ChannelParams,
    add_noise,
    apply_channel,
    apply_tilt,
    normalize_peak,
    room_impulse_response,
)
from metaspeech.datamodules.embedded.espeak import NATIVE_SAMPLE_RATE, synthesize
from metaspeech.datamodules.embedded.sentences import WORDS, is_valid_text, make_sentences
from metaspeech.datamodules.embedded.speakers import ACCENTS, HELD_OUT_ACCENTS, VARIANTS
from metaspeech.datamodules.manifest import read_manifest

MICRO = CorpusPreset("micro", num_train=3, num_val=2, num_test=2, utterances_per_speaker=3, min_words=3, max_words=4)
SPEAKER_LABELS = ("accent", "voice", "variant", "pitch", "rate", "tilt_db", "rt60", "snr_db", "noise", "split")


@pytest.fixture(scope="module")
def micro_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("corpus"), MICRO, seed=0, num_workers=1)


# --- eSpeak binding ---------------------------------------------------------


@pytest.mark.parametrize("accent", ACCENTS)
def test_every_accent_voice_speaks(accent: str) -> None:
    samples, rate = synthesize("the old man sat by the river", f"{accent}+m3", pitch=50, rate=170)
    assert rate == NATIVE_SAMPLE_RATE
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.size > rate // 2
    assert np.sqrt(np.mean(samples**2)) > 0.01
    assert np.max(np.abs(samples)) <= 1.0


def test_every_variant_speaks() -> None:
    for variant in VARIANTS:
        samples, _ = synthesize("hello there", f"en-us+{variant}")
        assert np.sqrt(np.mean(samples**2)) > 0.01, variant


def test_synthesis_depends_only_on_its_arguments() -> None:
    # eSpeak keeps state between utterances; the binding must reset it.
    first, _ = synthesize("where did the cat go", "en-us+f2", 60, 150, seed=3)
    synthesize("something else entirely", "en+klatt2", 20, 190, seed=9)
    again, _ = synthesize("where did the cat go", "en-us+f2", 60, 150, seed=3)
    assert np.array_equal(first, again)


def test_processes_share_one_private_library_and_leave_nothing_behind(tmp_path: Path) -> None:
    # Worker processes end without exit handlers: a copy per process would stay in the temporary folder.
    speak = ("import sys; from metaspeech.datamodules.embedded import espeak; espeak.synthesize('hello', 'en-us'); "
             "print(espeak._private_library())")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    paths = {subprocess.run([sys.executable, "-c", speak], env=env, capture_output=True, text=True, check=True).stdout.strip()
             for _ in range(2)}
    assert len(paths) == 1
    library = Path(paths.pop())
    assert library.parent.parent == tmp_path and library.is_file()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [library.name]  # no per-process copy, no partial file


def test_rate_and_pitch_change_the_audio() -> None:
    slow, _ = synthesize("the children played in the garden", "en-us", rate=120)
    fast, _ = synthesize("the children played in the garden", "en-us", rate=220)
    assert slow.size > 1.3 * fast.size
    low, _ = synthesize("hello there", "en-us", pitch=20)
    high, _ = synthesize("hello there", "en-us", pitch=80)
    assert not np.array_equal(low, high)


def test_unknown_voice_names_the_voice() -> None:
    with pytest.raises(RuntimeError, match="xx-nowhere"):
        synthesize("hello", "xx-nowhere")


# --- channel ----------------------------------------------------------------


def test_noise_meets_the_snr() -> None:
    signal = np.sin(np.linspace(0, 2000, 32000)).astype(np.float32)
    for color in ("white", "pink"):
        noisy = add_noise(signal, snr_db=20.0, color=color, seed=[1, 2])
        snr = 10 * np.log10(np.mean(signal**2) / np.mean((noisy - signal) ** 2))
        assert abs(snr - 20.0) < 0.5


def test_tilt_shifts_spectral_balance() -> None:
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)

    def high_to_low(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return float(power[4000:].sum() / power[:1000].sum())

    assert high_to_low(apply_tilt(noise, 16000, 3.0)) > 4 * high_to_low(noise)
    assert high_to_low(apply_tilt(noise, 16000, -3.0)) < high_to_low(noise) / 4


def test_room_is_seeded_and_channel_output_is_bounded() -> None:
    assert np.array_equal(room_impulse_response(0.3, 16000, [0, 5]), room_impulse_response(0.3, 16000, [0, 5]))
    assert not np.array_equal(room_impulse_response(0.3, 16000, [0, 5]), room_impulse_response(0.3, 16000, [0, 6]))
    samples, rate = synthesize("a quiet morning", "en")
    out = apply_channel(samples, rate, ChannelParams(2.0, 0.4, 15.0, "pink"), room_seed=1, noise_seed=2)
    assert out.dtype == np.float32
    assert out.size >= samples.size * 16000 // rate
    assert np.isclose(np.max(np.abs(out)), 0.9)
    assert np.max(np.abs(normalize_peak(out * 5))) <= 0.9 + 1e-6


# --- text -------------------------------------------------------------------


def test_sentences_use_the_character_set_and_vocabulary() -> None:
    assert 350 <= len([w for w in WORDS if not w.endswith("'s")]) <= 600
    for low, high in ((3, 5), (4, 9)):
        sentences = make_sentences(300, seed=(7, 1), min_words=low, max_words=high)
        assert all(is_valid_text(s) for s in sentences)
        assert all(low <= len(s.split()) <= high for s in sentences)
        assert all(w in WORDS for s in sentences for w in s.split())
    assert make_sentences(20, 5) == make_sentences(20, 5)
    assert make_sentences(20, 5) != make_sentences(20, 6)
    assert any("'" in s for s in make_sentences(200, 0))


# --- speakers ---------------------------------------------------------------


def test_make_speakers_is_deterministic_and_splits_are_disjoint() -> None:
    speakers = make_speakers(140, seed=3, num_val=10, num_test=20)
    assert speakers == make_speakers(140, seed=3, num_val=10, num_test=20)
    assert speakers != make_speakers(140, seed=4, num_val=10, num_test=20)
    assert len({s.speaker_id for s in speakers}) == 140
    by_split = defaultdict(list)
    for spec in speakers:
        assert isinstance(spec, SpeakerSpec)
        by_split[spec.split].append(spec)
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [110, 10, 20]
    train_accents = {s.accent for s in by_split["train"]}
    assert not train_accents & set(HELD_OUT_ACCENTS)
    assert train_accents == set(ACCENTS) - set(HELD_OUT_ACCENTS)
    for split in ("val", "test"):
        accents = {s.accent for s in by_split[split]}
        assert set(HELD_OUT_ACCENTS) <= accents
        assert accents - set(HELD_OUT_ACCENTS), f"{split} has no seen accent"


def test_make_speakers_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="seen accent"):
        make_speakers(10, held_out_accents=ACCENTS)
    with pytest.raises(ValueError, match="not among"):
        make_speakers(10, held_out_accents=("xx",))
    with pytest.raises(ValueError, match="training speaker"):
        make_speakers(4, num_val=2, num_test=2)


def test_presets_have_the_documented_shape() -> None:
    tiny, small = PRESETS["tiny"], PRESETS["small"]
    assert (tiny.num_train, tiny.num_val, tiny.num_test, tiny.utterances_per_speaker) == (12, 3, 3, 12)
    assert (tiny.min_words, tiny.max_words) == (3, 5)
    assert (small.num_train, small.num_val, small.num_test, small.utterances_per_speaker) == (200, 20, 20, 36)
    assert small.utterances_for("train") == 36 and small.utterances_for("test") == small.utterances_for("val") == 50
    assert small.num_utterances == 200 * 36 + 40 * 50
    assert PRESETS["full"].num_speakers == 400 and PRESETS["full"].utterances_per_speaker == 40


# --- generated corpus ---------------------------------------------------------


def test_corpus_layout_and_labels(micro_manifest: Path) -> None:
    directory = micro_manifest.parent
    assert directory.name == "micro-seed0" and micro_manifest.name == "manifest.jsonl"
    stamp = json.loads((directory / "corpus.json").read_text())
    assert stamp["seed"] == 0 and stamp["num_utterances"] == MICRO.num_utterances
    raw = [json.loads(line) for line in micro_manifest.read_text().splitlines()]
    assert len(raw) == MICRO.num_utterances
    for row in raw:
        assert not Path(row["audio_filepath"]).is_absolute()
        assert row["audio_filepath"] == f"wav/{row['speaker']}/{row['id']}.wav"
        for key in ("id", *SPEAKER_LABELS):
            assert key in row, key
        assert row["voice"] == f"{row['accent']}+{row['variant']}"
        assert is_valid_text(row["text"]) and 3 <= len(row["text"].split()) <= 4


def test_held_out_speakers_can_have_more_utterances_than_training_speakers(tmp_path: Path, micro_manifest: Path) -> None:
    preset = CorpusPreset("micro", num_train=3, num_val=2, num_test=2, utterances_per_speaker=3, min_words=3, max_words=4,
                          held_out_utterances=5)
    rows = read_manifest(generate_corpus(tmp_path, preset, seed=0, num_workers=1))
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[(row.label("split"), row.speaker)] += 1
    assert {n for (split, _), n in counts.items() if split == "train"} == {3}
    assert {n for (split, _), n in counts.items() if split != "train"} == {5}
    assert len(rows) == preset.num_utterances == 3 * 3 + 4 * 5
    first = {row.utterance_id: row.text for row in read_manifest(micro_manifest)}
    assert all(first[r.utterance_id] == r.text for r in rows if r.utterance_id in first)  # the extra ones are appended


def test_every_row_of_a_speaker_shares_its_voice_and_channel(micro_manifest: Path) -> None:
    rows = read_manifest(micro_manifest)
    per_speaker: dict[str, set] = defaultdict(set)
    for row in rows:
        per_speaker[row.speaker].add(tuple(row.label(k) for k in SPEAKER_LABELS))
    assert len(per_speaker) == MICRO.num_speakers
    assert all(len(values) == 1 for values in per_speaker.values())


def test_splits_are_disjoint_and_held_out_accents_never_train(micro_manifest: Path) -> None:
    rows = read_manifest(micro_manifest)
    split_of: dict[str, set] = defaultdict(set)
    for row in rows:
        split_of[row.speaker].add(row.label("split"))
    assert all(len(splits) == 1 for splits in split_of.values())
    train_accents = {r.label("accent") for r in rows if r.label("split") == "train"}
    assert not train_accents & set(HELD_OUT_ACCENTS)
    held_out_rows = [r for r in rows if r.label("accent") in HELD_OUT_ACCENTS]
    assert held_out_rows and all(r.label("split") in ("val", "test") for r in held_out_rows)


def test_audio_is_16k_mono_nonsilent_and_matches_durations(micro_manifest: Path) -> None:
    for row in read_manifest(micro_manifest):
        info = sf.info(row.audio_filepath)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        audio, _ = sf.read(row.audio_filepath, dtype="float32")
        assert abs(audio.size / 16000 - row.duration) < 1e-3
        assert 0.5 < row.duration < 10
        assert np.sqrt(np.mean(audio**2)) > 0.02


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, micro_manifest: Path) -> None:
    again = generate_corpus(tmp_path / "a", MICRO, seed=0, num_workers=1)
    assert again.read_bytes() == micro_manifest.read_bytes()
    for row in read_manifest(again):
        twin = micro_manifest.parent / Path(row.audio_filepath).relative_to(again.parent)
        assert Path(row.audio_filepath).read_bytes() == twin.read_bytes()
    other = generate_corpus(tmp_path / "b", MICRO, seed=1, num_workers=1)
    assert other.read_bytes() != micro_manifest.read_bytes()


def test_worker_processes_give_the_same_corpus(tmp_path: Path, micro_manifest: Path) -> None:
    parallel = generate_corpus(tmp_path, MICRO, seed=0, num_workers=2)
    assert parallel.read_bytes() == micro_manifest.read_bytes()
    for row in read_manifest(parallel):
        twin = micro_manifest.parent / Path(row.audio_filepath).relative_to(parallel.parent)
        assert Path(row.audio_filepath).read_bytes() == twin.read_bytes()


def test_cached_corpus_is_reused(micro_manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cached corpus was generated again")

    before = micro_manifest.stat().st_mtime_ns
    monkeypatch.setattr(generate_module, "_render_all", fail)
    assert generate_corpus(micro_manifest.parent.parent, MICRO, seed=0) == micro_manifest
    assert micro_manifest.stat().st_mtime_ns == before


def test_interrupted_or_stale_corpus_is_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = generate_corpus(tmp_path, MICRO, seed=0, num_workers=1)
    stamp = manifest.parent / "corpus.json"
    calls = []
    render_all = generate_module._render_all
    monkeypatch.setattr(generate_module, "_render_all", lambda *a: calls.append(1) or render_all(*a))

    stamp.unlink()  # as if generation died before finishing
    (manifest.parent / "wav" / "leftover.wav").write_bytes(b"junk")
    assert generate_corpus(tmp_path, MICRO, seed=0, num_workers=1) == manifest
    assert calls == [1] and stamp.is_file()
    assert not (manifest.parent / "wav" / "leftover.wav").exists()

    data = json.loads(stamp.read_text())
    data["generator_version"] = -1  # made by another generator version
    stamp.write_text(json.dumps(data))
    generate_corpus(tmp_path, MICRO, seed=0, num_workers=1)
    assert calls == [1, 1]
    assert json.loads(stamp.read_text())["generator_version"] == generate_module.GENERATOR_VERSION


def test_unknown_preset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus preset"):
        generate_corpus(tmp_path, "huge")


def test_held_out_speakers_are_grouped_by_whether_their_accent_was_seen_in_meta_training(tiny_data) -> None:
    data = tiny_data()
    groups = data.task_groups("test")
    test_speakers = {r.speaker for r in data.rows if r.labels["split"] == "test"}
    assert set(groups) == test_speakers
    train_accents = {r.labels["accent"] for r in data.rows if r.labels["split"] == "train"}
    for row in data.rows:
        if row.speaker in groups:
            assert groups[row.speaker] == ("seen accent" if row.labels["accent"] in train_accents else "unseen accent")
    assert "unseen accent" in groups.values()
