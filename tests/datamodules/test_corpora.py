"""Corpus loaders on tiny fixtures built in each corpus's real layout (see conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from metaspeech.datamodules.corpora import (
    CorpusLayoutError,
    load_common_voice,
    load_jsonl_manifest,
    load_librispeech,
    load_timit,
    load_vctk,
)
from metaspeech.datamodules.manifest import Utterance, read_manifest, write_manifest
from metaspeech.speech.audio import AudioError


def by_id(rows: list[Utterance]) -> dict[str, Utterance]:
    return {row.utterance_id: row for row in rows}


def test_a_wrong_corpus_layout_is_a_file_not_found_error() -> None:
    assert issubclass(CorpusLayoutError, FileNotFoundError)


# ------------------------------------------------------------------ LibriSpeech
def test_librispeech_rows_labels_and_durations(librispeech_root: Path) -> None:
    rows = by_id(load_librispeech(librispeech_root))
    assert sorted(rows) == ["19-198-0000", "19-198-0001", "26-495-0000", "84-121123-0000"]
    row = rows["19-198-0000"]
    assert row.text == "NORTHANGER ABBEY"  # kept as in the corpus
    assert row.speaker == "19"
    assert row.duration == pytest.approx(0.3, abs=1e-3)
    assert Path(row.audio_filepath).is_absolute() and Path(row.audio_filepath).is_file()
    assert row.labels == {"id": "19-198-0000", "chapter": "198", "subset": "train-clean-100", "gender": "female"}
    assert rows["26-495-0000"].labels["gender"] == "male"


def test_librispeech_subsets_and_subset_root(librispeech_root: Path) -> None:
    only_dev = load_librispeech(librispeech_root, subsets=["dev-clean"])
    assert [row.speaker for row in only_dev] == ["84"]
    subset_root = load_librispeech(librispeech_root / "train-clean-100")
    assert {row.speaker for row in subset_root} == {"19", "26"}
    assert all(row.labels["gender"] for row in subset_root)  # SPEAKERS.TXT found one level up
    with pytest.raises(CorpusLayoutError, match=r"subset\(s\) \['test-other'\].*available"):
        load_librispeech(librispeech_root, subsets=["test-other"])


def test_librispeech_without_speakers_txt(librispeech_root: Path) -> None:
    (librispeech_root / "SPEAKERS.TXT").unlink()
    assert all("gender" not in row.labels for row in load_librispeech(librispeech_root))


def test_librispeech_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="does not exist"):
        load_librispeech(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.flac").write_bytes(b"")
    with pytest.raises(CorpusLayoutError, match=r"no '\*\.trans\.txt' found under .*flat: expected LibriSpeech layout"):
        load_librispeech(tmp_path / "flat")


def test_librispeech_missing_audio_is_kept_for_validation(librispeech_root: Path) -> None:
    missing = librispeech_root / "dev-clean" / "84" / "121123" / "84-121123-0000.flac"
    missing.unlink()
    with pytest.warns(UserWarning, match="1 of 1 audio file"):
        rows = by_id(load_librispeech(librispeech_root, subsets=["dev-clean"]))
    assert rows["84-121123-0000"].duration == 0.0


# ------------------------------------------------------------------ VCTK
def test_vctk_092_rows_accents_and_mic(vctk_root: Path) -> None:
    with pytest.warns(UserWarning, match=r"VCTK: skipped 2 recording\(s\) without a transcript.*p315_001"):
        rows = by_id(load_vctk(vctk_root))
    assert sorted(rows) == ["p225_001", "p225_002", "p245_001"]
    row = rows["p225_002"]
    assert row.speaker == "p225"
    assert row.text == "Ask her to bring these things."
    assert row.duration == pytest.approx(0.4, abs=1e-3)
    assert row.audio_filepath.endswith("p225_002_mic1.flac")
    assert row.labels == {"id": "p225_002", "mic": "mic1", "accent": "English", "gender": "female", "age": 23, "region": "Southern England"}
    assert rows["p245_001"].labels["accent"] == "Irish"


def test_vctk_mic2_and_bad_mic(vctk_root: Path) -> None:
    rows = load_vctk(vctk_root, mic="mic2")  # the fixture's p315 has mic1 files only: nothing skipped
    assert all(row.audio_filepath.endswith("_mic2.flac") for row in rows) and len(rows) == 3
    with pytest.raises(ValueError, match="mic1"):
        load_vctk(vctk_root, mic="mic3")


def test_vctk_old_layout(vctk_old_root: Path) -> None:
    (row,) = load_vctk(vctk_old_root)
    assert row.speaker == "p226" and row.labels["accent"] == "English" and row.labels["gender"] == "male"
    assert "mic" not in row.labels
    assert sf.info(row.audio_filepath).samplerate == 48000  # loaders do not resample; load_audio does


def test_vctk_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="does not exist"):
        load_vctk(tmp_path / "nowhere")
    (tmp_path / "txt").mkdir()
    with pytest.raises(CorpusLayoutError, match="wav48_silence_trimmed/ nor wav48/"):
        load_vctk(tmp_path)


# ------------------------------------------------------------------ Common Voice
def test_common_voice_rows_and_accents(common_voice_root: Path) -> None:
    rows = by_id(load_common_voice(common_voice_root))
    assert sorted(rows) == ["common_voice_en_1", "common_voice_en_2", "common_voice_en_3"]
    quoted = rows["common_voice_en_1"]
    assert quoted.text == 'He said "hello" there.'  # quotes in sentences are text, not CSV quoting
    assert quoted.speaker == "aaa111"
    assert quoted.labels == {
        "id": "common_voice_en_1", "accent": "United States English", "gender": "male",
        "age": "twenties", "subset": "validated", "locale": "en",
    }
    unknown = rows["common_voice_en_3"]
    assert unknown.audio_filepath.endswith("clips/common_voice_en_3.flac")
    assert unknown.duration == pytest.approx(0.4, abs=1e-3)
    assert (unknown.labels["accent"], unknown.labels["gender"], unknown.labels["age"]) == ("unknown",) * 3


def test_common_voice_old_accent_column_and_split(common_voice_root: Path) -> None:
    table = common_voice_root / "validated.tsv"
    table.write_text(table.read_text().replace("\taccents\t", "\taccent\t", 1))
    assert by_id(load_common_voice(common_voice_root))["common_voice_en_2"].labels["accent"] == "United States English"
    assert len(load_common_voice(common_voice_root, split="train")) == 1


def test_common_voice_bad_layouts(common_voice_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="does not exist"):
        load_common_voice(tmp_path / "nowhere")
    with pytest.raises(CorpusLayoutError, match=r"dev\.tsv does not exist \(available splits: \['train', 'validated'\]\)"):
        load_common_voice(common_voice_root, split="dev")
    (common_voice_root / "other.tsv").write_text("id\tfile\ttext\n")
    with pytest.raises(CorpusLayoutError, match=r"no column\(s\) \['client_id', 'path', 'sentence'\]"):
        load_common_voice(common_voice_root, split="other")


# ------------------------------------------------------------------ TIMIT
def test_timit_rows_dialects_and_gender(timit_root: Path) -> None:
    rows = by_id(load_timit(timit_root))
    assert sorted(rows) == ["FCJF0_SA1", "FCJF0_SI1027", "MARC0_SX286", "MSLB0_SA2"]
    row = rows["FCJF0_SI1027"]
    assert row.text == "Even then, if she took one step forward."  # sample offsets dropped, text as in corpus
    assert row.speaker == "FCJF0"
    assert row.duration == pytest.approx(0.3, abs=1e-3)
    assert row.labels == {"id": "FCJF0_SI1027", "accent": "dr1", "dialect": "dr1", "gender": "female", "subset": "train"}
    assert rows["MSLB0_SA2"].labels == {"id": "MSLB0_SA2", "accent": "dr8", "dialect": "dr8", "gender": "male", "subset": "test"}
    assert len(load_timit(timit_root, include_sa=False)) == 2


def test_timit_lowercase_layout_and_riff_copy_preferred(timit_root: Path, tmp_path: Path) -> None:
    lower = tmp_path / "timit_lower"
    shutil.copytree(timit_root, lower)
    for path in sorted(lower.rglob("*"), key=lambda p: -len(p.parts)):  # deepest first
        path.rename(path.with_name(path.name.lower()))
    assert len(load_timit(lower)) == 4
    # a SPHERE original next to a converted SA1.WAV.wav copy: the RIFF copy is read
    speaker = timit_root / "TRAIN" / "DR1" / "FCJF0"
    (speaker / "SA1.WAV").rename(speaker / "SA1.WAV.wav")
    (speaker / "SA1.WAV").write_bytes(b"NIST_1A\n   1024\nsample_coding -s26 pcm,embedded-shorten-v2.00\nend_head\n")
    assert by_id(load_timit(timit_root))["FCJF0_SA1"].audio_filepath.endswith("SA1.WAV.wav")


def test_timit_uncompressed_sphere_is_read(timit_root: Path) -> None:
    """The LDC release's uncompressed SPHERE .WAV files are read by libsndfile directly."""
    audio = timit_root / "TRAIN" / "DR2" / "MARC0" / "SX286.WAV"
    data, rate = sf.read(str(audio))
    sf.write(str(audio), data, rate, format="NIST", subtype="PCM_16")
    assert audio.read_bytes()[:7] == b"NIST_1A"
    assert by_id(load_timit(timit_root))["MARC0_SX286"].duration == pytest.approx(0.3, abs=1e-3)


def test_timit_compressed_sphere_stops_with_conversion_advice(timit_root: Path) -> None:
    audio = timit_root / "TEST" / "DR8" / "MSLB0" / "SA2.WAV"
    audio.write_bytes(b"NIST_1A\n   1024\nsample_coding -s26 pcm,embedded-shorten-v2.00\nend_head\n".ljust(1024, b" ") + b"\x01" * 64)
    with pytest.raises(AudioError, match=r"NIST SPHERE.*SA2\.WAV.*sox"):
        load_timit(timit_root)


def test_timit_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="does not exist"):
        load_timit(tmp_path / "nowhere")
    (tmp_path / "DR1").mkdir()
    with pytest.raises(CorpusLayoutError, match=r"no TRAIN/ or TEST/ folder under .*expected TIMIT layout"):
        load_timit(tmp_path)


# ------------------------------------------------------------------ JSONL manifest
def test_jsonl_manifest_round_trip(librispeech_root: Path, tmp_path: Path) -> None:
    rows = load_librispeech(librispeech_root)
    manifest = write_manifest(rows, librispeech_root / "manifest.jsonl", relative_to=librispeech_root)
    assert not json.loads(manifest.read_text().splitlines()[0])["audio_filepath"].startswith("/")
    assert load_jsonl_manifest(manifest) == read_manifest(manifest)
    loaded = by_id(load_jsonl_manifest(manifest))
    assert loaded == by_id([Utterance(r.audio_filepath, r.text, r.speaker, round(r.duration, 4), r.labels) for r in rows])


def test_jsonl_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="manifest .*nope.jsonl does not exist"):
        load_jsonl_manifest(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CorpusLayoutError, match="no manifest utterances"):
        load_jsonl_manifest(empty)
    gone = write_manifest([Utterance(str(tmp_path / "gone.wav"), "hi", "s1", 1.0)], tmp_path / "m.jsonl")
    with pytest.warns(UserWarning, match=r"1 of 1 audio file\(s\) do not exist.*gone\.wav"):
        assert len(load_jsonl_manifest(gone)) == 1
