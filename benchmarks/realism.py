"""How close each embedded engine's speech is to human speech: WER of a recognizer trained on human speech.

    .venv/bin/python benchmarks/realism.py                                # 20 utterances per engine, 10 speakers
    .venv/bin/python benchmarks/realism.py --engines kokoro --threads 1     # Kokoro alone on one thread: its synthesis time

The recognizer is pocketsphinx's bundled US English model (acoustic model, 3-gram
language model and dictionary, all trained on human speech, none on these
corpora). It is weak, so its WER on real read speech is far from 0; the *gap*
between the engines is the measure: the closer a synthetic voice is to human
speech, the more of it a model of human speech understands.

Both engines speak the same sentences, with speakers drawn as their corpora draw
them (every accent allowed). Each utterance is scored twice: clean (the voice
alone) and through the speaker's recording channel (room, tilt, noise; what the
corpus holds). Also reported: the spread across speakers of each speaker's
median pitch, a cheap measure of how different the speakers sound. Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

SAMPLE_RATE = 16000
PITCH_RANGE_HZ = (60.0, 400.0)


def median_pitch(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = 0.04) -> float:
    """Median F0 (Hz) of the voiced frames, by normalized autocorrelation; NaN if no frame is voiced.

    A frame counts as voiced when its autocorrelation peak in 60-400 Hz is above
    0.5 of its energy and its level is within 30 dB of the loudest frame.
    """
    size = int(frame_s * sample_rate)
    frames = samples[: samples.size // size * size].reshape(-1, size).astype(np.float64)
    if frames.size == 0:
        return float("nan")
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.sum(frames**2, axis=1)
    loud = energy > energy.max() * 1e-3
    spectrum = np.fft.rfft(frames, 2 * size, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :size]
    low, high = int(sample_rate / PITCH_RANGE_HZ[1]), int(sample_rate / PITCH_RANGE_HZ[0])
    lags = low + np.argmax(autocorr[:, low:high], axis=1)
    strength = autocorr[np.arange(len(frames)), lags] / np.maximum(autocorr[:, 0], 1e-12)
    voiced = loud & (strength > 0.5)
    return float(np.median(sample_rate / lags[voiced])) if voiced.any() else float("nan")


class Recognizer:
    """pocketsphinx with its bundled en-us model, decoding whole 16 kHz utterances."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SAMPLE_RATE, logfn="/dev/null")

    def __call__(self, samples: np.ndarray) -> str:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr.lower() if hypothesis else ""


def espeak_speakers(count: int, seed: int) -> list[tuple[object, Callable[[str], tuple[np.ndarray, int]]]]:
    """(speaker spec, speak(text) -> (samples, rate)) for ``count`` eSpeak speakers."""
    from metaspeech.datamodules.embedded.espeak import synthesize
    from metaspeech.datamodules.embedded.speakers import make_speakers

    specs = make_speakers(count, seed, held_out_accents=(), num_val=0, num_test=0)
    return [(s, lambda text, s=s: synthesize(text, s.voice, s.pitch, s.rate, seed=seed)) for s in specs]


def kokoro_speakers(count: int, seed: int, threads: int | None) -> list[tuple[object, Callable[[str], tuple[np.ndarray, int]]]]:
    """(speaker spec, speak(text) -> (samples, rate)) for ``count`` Kokoro speakers (training voices only)."""
    from metaspeech.datamodules.embedded.kokoro import SAMPLE_RATE as KOKORO_RATE
    from metaspeech.datamodules.embedded.kokoro import KokoroSynthesizer
    from metaspeech.datamodules.embedded.kokoro_speakers import make_kokoro_speakers

    synthesizer = KokoroSynthesizer(threads)
    specs = make_kokoro_speakers(count, seed, held_out_accents=(), num_val=0, num_test=0)

    def speak(spec, text: str) -> tuple[np.ndarray, int]:
        return synthesizer.synthesize(text, spec.accent, spec.voices, spec.weights, spec.speed), KOKORO_RATE

    return [(s, lambda text, s=s: speak(s, text)) for s in specs]


def measure_engine(name: str, speakers: list, texts: list[str], recognize: Recognizer, seed: int) -> dict:
    """WER clean and through the channel, synthesis time and pitch spread of one engine on ``texts``."""
    import jiwer

    from metaspeech.datamodules.embedded.channel import apply_channel, resample

    clean, channel, seconds, audio_seconds = [], [], 0.0, 0.0
    pitch: dict[str, list[float]] = {}
    for index, text in enumerate(texts):
        spec, speak = speakers[index % len(speakers)]
        start = time.perf_counter()
        samples, rate = speak(text)
        seconds += time.perf_counter() - start
        voice = resample(samples, rate, SAMPLE_RATE)
        audio_seconds += voice.size / SAMPLE_RATE
        recorded = apply_channel(samples, rate, spec.channel, room_seed=[seed, index], noise_seed=[seed, index, 1])
        clean.append(recognize(voice))
        channel.append(recognize(recorded))
        pitch.setdefault(spec.speaker_id, []).append(median_pitch(voice))
    per_speaker = np.array([np.nanmedian(values) for values in pitch.values()])
    return {
        "engine": name,
        "utterances": len(texts),
        "speakers": len(pitch),
        "wer_clean": jiwer.wer(texts, clean),
        "wer_channel": jiwer.wer(texts, channel),
        "seconds_per_utterance": seconds / len(texts),
        "real_time_factor": seconds / audio_seconds,
        "pitch_hz": {
            "mean": float(np.nanmean(per_speaker)), "std": float(np.nanstd(per_speaker)),
            "min": float(np.nanmin(per_speaker)), "max": float(np.nanmax(per_speaker)),
        },  # fmt: skip
        "examples": [{"text": t, "clean": c, "channel": h} for t, c, h in list(zip(texts, clean, channel))[:3]],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| engine | utterances | speakers | WER clean | WER with channel | s / utterance | RTF | median pitch across speakers (Hz) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r["pitch_hz"]
        lines.append(
            f"| {r['engine']} | {r['utterances']} | {r['speakers']} | {100 * r['wer_clean']:.1f} % | "
            f"{100 * r['wer_channel']:.1f} % | {r['seconds_per_utterance']:.2f} | {r['real_time_factor']:.2f} | "
            f"{p['mean']:.0f} ± {p['std']:.0f} ({p['min']:.0f}-{p['max']:.0f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=20, help="per engine")
    parser.add_argument("--speakers", type=int, default=10)
    parser.add_argument("--engines", nargs="+", default=["espeak", "kokoro"], choices=["espeak", "kokoro"])
    parser.add_argument("--min_words", type=int, default=4)
    parser.add_argument("--max_words", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: every CPU)")
    parser.add_argument("--output", default="results/benchmarks/realism.json")
    args = parser.parse_args(argv)
    from metaspeech.datamodules.embedded.sentences import make_sentences

    texts = make_sentences(args.utterances, seed=(args.seed, 7), min_words=args.min_words, max_words=args.max_words)
    recognize = Recognizer()
    builders = {"espeak": lambda: espeak_speakers(args.speakers, args.seed),
                "kokoro": lambda: kokoro_speakers(args.speakers, args.seed, args.threads)}
    results = [measure_engine(name, builders[name](), texts, recognize, args.seed) for name in args.engines]
    print(table(results))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
