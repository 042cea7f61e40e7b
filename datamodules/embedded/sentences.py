"""Built-in English text for the embedded corpus.

Why a small grammar instead of random word strings: character CTC learns
spelling and common letter sequences, so the text should look like English
(determiners before nouns, verbs in the past tense, "an" before vowels,
contractions with apostrophes) while staying within a closed vocabulary of
common words that eSpeak pronounces well. Everything is lowercase letters,
apostrophes and single spaces, the alphabet a character tokenizer needs.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz' "
"""Every character a generated sentence can contain."""

_VALID_TEXT = re.compile(r"[a-z']+( [a-z']+)*")

DETERMINERS = ("the", "a", "my", "your", "his", "her", "our", "their", "this", "that", "every", "one")
SUBJECT_PRONOUNS = ("i", "you", "he", "she", "we", "they", "it")
OBJECT_PRONOUNS = ("me", "you", "him", "her", "us", "them", "it")
# Subjects that take "don't" rather than "doesn't".
_PLURAL_SUBJECTS = frozenset({"i", "you", "we", "they"})
WILL_CONTRACTIONS = ("i'll", "you'll", "he'll", "she'll", "we'll", "they'll")

NOUNS = (
    "dog", "cat", "bird", "fish", "horse", "cow", "pig", "sheep", "mouse", "fox", "wolf", "bear",
    "duck", "frog", "man", "woman", "child", "boy", "girl", "baby", "friend", "teacher", "doctor",
    "farmer", "king", "queen", "driver", "father", "mother", "brother", "sister", "family", "house",
    "room", "door", "window", "table", "chair", "bed", "floor", "wall", "roof", "garden", "tree",
    "flower", "grass", "leaf", "river", "lake", "sea", "hill", "mountain", "road", "street",
    "bridge", "city", "town", "village", "school", "shop", "market", "church", "park", "field",
    "farm", "forest", "island", "beach", "boat", "ship", "car", "bus", "train", "bike", "book",
    "letter", "paper", "pen", "box", "bag", "cup", "glass", "plate", "bottle", "bowl", "knife",
    "spoon", "bread", "cake", "apple", "egg", "orange", "water", "tea", "soup", "cheese", "coat",
    "hat", "shoe", "shirt", "dress", "ring", "key", "clock", "lamp", "phone", "picture", "song",
    "story", "game", "ball", "kite", "toy", "rock", "stone", "fire", "light", "morning", "radio",
    "piano", "kitchen", "camera", "basket", "blanket", "candle", "pocket", "ladder", "wagon",
    "castle", "tower", "cottage", "meadow", "valley", "harbor", "umbrella", "engine", "office",
    "animal", "uncle", "aunt", "owl", "elephant", "ant", "artist", "airport", "oven", "igloo",
)  # fmt: skip
ADJECTIVES = (
    "big", "small", "little", "old", "new", "young", "good", "long", "short", "tall", "happy",
    "sad", "quiet", "loud", "warm", "cold", "hot", "cool", "dark", "bright", "clean", "dirty",
    "soft", "hard", "heavy", "fast", "slow", "red", "blue", "green", "yellow", "white", "black",
    "brown", "gray", "pink", "golden", "empty", "full", "rich", "poor", "kind", "brave", "tired",
    "hungry", "busy", "lazy", "clever", "strange", "funny", "pretty", "wet", "dry", "sweet",
    "fresh", "wooden", "tiny", "huge", "gentle", "friendly", "lonely", "famous", "broken", "open",
    "angry", "early", "honest", "orange", "ugly", "icy",
)  # fmt: skip
# (past tense, base form) of verbs that take an object.
TRANSITIVE_VERBS = (
    ("saw", "see"), ("found", "find"), ("took", "take"), ("made", "make"), ("brought", "bring"),
    ("bought", "buy"), ("sold", "sell"), ("kept", "keep"), ("held", "hold"), ("opened", "open"),
    ("closed", "close"), ("painted", "paint"), ("cleaned", "clean"), ("washed", "wash"),
    ("cooked", "cook"), ("carried", "carry"), ("pulled", "pull"), ("pushed", "push"),
    ("watched", "watch"), ("liked", "like"), ("loved", "love"), ("needed", "need"),
    ("wanted", "want"), ("visited", "visit"), ("called", "call"), ("helped", "help"),
    ("followed", "follow"), ("caught", "catch"), ("threw", "throw"), ("dropped", "drop"),
    ("lost", "lose"), ("broke", "break"), ("fixed", "fix"), ("built", "build"), ("read", "read"),
    ("wrote", "write"), ("drew", "draw"), ("ate", "eat"), ("picked", "pick"), ("moved", "move"),
    ("filled", "fill"), ("touched", "touch"), ("heard", "hear"), ("met", "meet"),
    ("chased", "chase"), ("fed", "feed"), ("hid", "hide"), ("packed", "pack"), ("showed", "show"),
    ("sent", "send"), ("borrowed", "borrow"), ("remembered", "remember"), ("forgot", "forget"),
)  # fmt: skip
# (past tense, base form) of verbs used without an object.
INTRANSITIVE_VERBS = (
    ("ran", "run"), ("walked", "walk"), ("slept", "sleep"), ("laughed", "laugh"),
    ("smiled", "smile"), ("cried", "cry"), ("sang", "sing"), ("danced", "dance"),
    ("jumped", "jump"), ("waited", "wait"), ("stayed", "stay"), ("arrived", "arrive"),
    ("fell", "fall"), ("swam", "swim"), ("played", "play"), ("worked", "work"), ("rested", "rest"),
    ("listened", "listen"), ("shouted", "shout"), ("stopped", "stop"), ("started", "start"),
    ("returned", "return"), ("climbed", "climb"), ("talked", "talk"), ("sat", "sit"),
    ("stood", "stand"), ("went", "go"), ("came", "come"), ("left", "leave"), ("waved", "wave"),
)  # fmt: skip
MODALS = (
    "can", "could", "will", "would", "should", "must", "might", "didn't", "can't", "won't",
    "couldn't", "wouldn't", "shouldn't",
)  # fmt: skip
ADVERBS = (
    "today", "yesterday", "again", "slowly", "quickly", "quietly", "together", "outside",
    "inside", "early", "late", "soon", "later", "away", "there", "here", "tonight", "alone",
    "carefully", "happily", "home", "once", "twice",
)  # fmt: skip
PREPOSITIONS = (
    "in", "on", "under", "near", "behind", "by", "with", "from", "into", "across", "over", "to",
    "through", "around", "past", "beside", "without", "after", "before",
)  # fmt: skip
QUESTION_WORDS = ("where", "when", "why", "how")
CONJUNCTIONS = ("and", "but", "so", "then")


def _pick(rng: np.random.Generator, options: Sequence) -> object:
    return options[int(rng.integers(len(options)))]


def _article(words: list[str]) -> list[str]:
    """Fix "a" before a vowel sound ("a apple" -> "an apple")."""
    return ["an" if w == "a" and nxt[0] in "aeiou" else w for w, nxt in zip(words, words[1:] + ["x"])]


def _noun_phrase(rng: np.random.Generator) -> list[str]:
    words = [str(_pick(rng, DETERMINERS))]
    roll = rng.random()
    if roll < 0.12:  # possessive: "my friend's dog"
        words += [str(_pick(rng, NOUNS)) + "'s"]
    elif roll < 0.55:
        words += [str(_pick(rng, ADJECTIVES))]
    return words + [str(_pick(rng, NOUNS))]


def _subject(rng: np.random.Generator) -> list[str]:
    return [str(_pick(rng, SUBJECT_PRONOUNS))] if rng.random() < 0.35 else _noun_phrase(rng)


def _object(rng: np.random.Generator) -> list[str]:
    return [str(_pick(rng, OBJECT_PRONOUNS))] if rng.random() < 0.25 else _noun_phrase(rng)


def _verb_phrase(rng: np.random.Generator, tense: str) -> list[str]:
    """A past-tense ("past") or bare ("base") verb with its object or a place."""
    index = 0 if tense == "past" else 1
    if rng.random() < 0.6:
        return [str(_pick(rng, TRANSITIVE_VERBS)[index])] + _object(rng)
    return [str(_pick(rng, INTRANSITIVE_VERBS)[index])]


def _tail(rng: np.random.Generator) -> list[str]:
    roll = rng.random()
    if roll < 0.35:
        return [str(_pick(rng, PREPOSITIONS))] + _noun_phrase(rng)
    if roll < 0.65:
        return [str(_pick(rng, ADVERBS))]
    return []


def _statement(rng: np.random.Generator) -> list[str]:
    return _subject(rng) + _verb_phrase(rng, "past") + _tail(rng)


def _modal_statement(rng: np.random.Generator) -> list[str]:
    if rng.random() < 0.25:
        return [str(_pick(rng, WILL_CONTRACTIONS))] + _verb_phrase(rng, "base") + _tail(rng)
    subject = _subject(rng)
    if rng.random() < 0.3:
        modal = "don't" if subject[0] in _PLURAL_SUBJECTS else "doesn't"
    else:
        modal = str(_pick(rng, MODALS))
    return subject + [modal] + _verb_phrase(rng, "base") + _tail(rng)


def _description(rng: np.random.Generator) -> list[str]:
    """ "it's a warm day", "that's my old coat", "the tea was cold"."""
    if rng.random() < 0.5:
        return [str(_pick(rng, ("it's", "that's", "there's")))] + _noun_phrase(rng) + _tail(rng)
    return _noun_phrase(rng) + [str(_pick(rng, ("was", "wasn't", "is", "isn't")))] + [str(_pick(rng, ADJECTIVES))]


def _question(rng: np.random.Generator) -> list[str]:
    """Questions without the question mark: "where did the old man go"."""
    opener = ["did"] if rng.random() < 0.5 else [str(_pick(rng, QUESTION_WORDS)), "did"]
    return opener + _subject(rng) + _verb_phrase(rng, "base") + _tail(rng)


def _compound(rng: np.random.Generator) -> list[str]:
    return _statement(rng) + [str(_pick(rng, CONJUNCTIONS))] + _subject(rng) + _verb_phrase(rng, "past")


_TEMPLATES: tuple[tuple[Callable[[np.random.Generator], list[str]], float], ...] = (
    (_statement, 0.35),
    (_modal_statement, 0.2),
    (_description, 0.15),
    (_question, 0.15),
    (_compound, 0.15),
)


def make_sentence(rng: np.random.Generator, min_words: int = 4, max_words: int = 9) -> str:
    """One sentence of ``min_words`` to ``max_words`` words, drawn from ``rng`` only.

    Candidates are drawn until one fits the length range (rejection sampling keeps
    the grammar simple; every range within 3-12 words is met within a few tries).
    """
    if not 3 <= min_words <= max_words <= 16:
        raise ValueError(f"need 3 <= min_words <= max_words <= 16, got {min_words}..{max_words}")
    weights = np.array([w for _, w in _TEMPLATES])
    for _ in range(1000):
        template = _TEMPLATES[int(rng.choice(len(_TEMPLATES), p=weights / weights.sum()))][0]
        words = _article(template(rng))
        if min_words <= len(words) <= max_words:
            return " ".join(words)
    raise RuntimeError(f"could not draw a sentence of {min_words}..{max_words} words")  # pragma: no cover


def make_sentences(count: int, seed: int | Sequence[int], min_words: int = 4, max_words: int = 9) -> list[str]:
    """``count`` sentences, reproducible from ``seed`` (an int or a tuple such as (seed, speaker))."""
    rng = np.random.default_rng(seed)
    return [make_sentence(rng, min_words, max_words) for _ in range(count)]


def is_valid_text(text: str) -> bool:
    """True when ``text`` uses only [a-z'] words separated by single spaces."""
    return bool(_VALID_TEXT.fullmatch(text))


def _vocabulary() -> tuple[str, ...]:
    words: set[str] = set(DETERMINERS) | {"an"} | set(SUBJECT_PRONOUNS) | set(OBJECT_PRONOUNS)
    words |= set(WILL_CONTRACTIONS) | set(NOUNS) | {n + "'s" for n in NOUNS} | set(ADJECTIVES)
    for pair in TRANSITIVE_VERBS + INTRANSITIVE_VERBS:
        words |= set(pair)
    words |= set(MODALS) | {"don't", "doesn't", "did"} | set(ADVERBS) | set(PREPOSITIONS)
    words |= set(QUESTION_WORDS) | set(CONJUNCTIONS) | {"it's", "that's", "there's", "was", "wasn't", "is", "isn't"}
    return tuple(sorted(words))


WORDS: tuple[str, ...] = _vocabulary()
"""Every word :func:`make_sentence` can emit (base words plus possessive forms of nouns)."""
