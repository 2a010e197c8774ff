"""A seeded synthetic biography corpus for testing what a language model
stores: people with attributes, each attribute stated in several templated
sentences, and questions about them in phrasings held out of training.

Every person is a (first name, last name) pair drawn from two small pools, so
no single token identifies a person: a model has to combine the two names to
recall a fact, as it would for real entities. Attribute values are single
tokens, so an answer is right when the model's next token after the question
is the value (exact match).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

# attribute -> (value kind, bio templates, training question templates (the
# first BioConfig.question_phrasings of them are used), held-out question
# templates). "{n}" is the person's two name tokens, "{v}"
# the value; questions end where the answer starts.
ATTRIBUTES: Dict[str, Tuple[str, List[str], List[str], List[str]]] = {
    "birth_year": (
        "year",
        ["{n} was born in {v} .", "{n} came into the world in {v} .", "the year {n} was born was {v} ."],
        ["Q : what year was {n} born ? A :", "Q : when was {n} born ? A :",
         "Q : {n} was born when ? A :", "Q : in what year was {n} born ? A :"],
        ["Q : {n} was born in which year ? A :"],
    ),
    "city": (
        "place",
        ["{n} grew up in {v} .", "{n} spent a childhood in {v} .", "the home town of {n} is {v} ."],
        ["Q : where did {n} grow up ? A :", "Q : what is the home town of {n} ? A :",
         "Q : {n} grew up where ? A :", "Q : in what town did {n} grow up ? A :"],
        ["Q : {n} grew up in which town ? A :"],
    ),
    "employer": (
        "org",
        ["{n} works for {v} .", "{n} is employed by {v} .", "the employer of {n} is {v} ."],
        ["Q : who employs {n} ? A :", "Q : which company does {n} work for ? A :",
         "Q : {n} works for whom ? A :", "Q : for what company does {n} work ? A :"],
        ["Q : {n} is employed by which company ? A :"],
    ),
    "university": (
        "school",
        ["{n} studied at {v} .", "{n} graduated from {v} .", "the university of {n} was {v} ."],
        ["Q : where did {n} study ? A :", "Q : which university did {n} attend ? A :",
         "Q : {n} studied where ? A :", "Q : at what university did {n} study ? A :"],
        ["Q : {n} graduated from which university ? A :"],
    ),
    "field": (
        "field",
        ["{n} majored in {v} .", "{n} chose {v} as a major .", "the major of {n} was {v} ."],
        ["Q : what did {n} major in ? A :", "Q : what was the major of {n} ? A :",
         "Q : {n} majored in what ? A :", "Q : in what field did {n} major ? A :"],
        ["Q : {n} chose which major ? A :"],
    ),
}

SPECIALS = ["<pad>", "<bos>", "<eos>"]
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "x"]


def _words(rng: random.Random, count: int, syllables: int, taken: set) -> List[str]:
    """`count` distinct pronounceable pseudo-words (capitalised), none in `taken`."""
    out: List[str] = []
    while len(out) < count:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
        w = w.capitalize()
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@dataclass
class BioConfig:
    people: int = 200
    attributes: Sequence[str] = ("birth_year", "city", "employer")
    first_names: int = 24
    last_names: int = 24
    values_per_attribute: int = 32  # distinct values (birth years: the first this many from 1900)
    bios_per_fact: int = 3  # bio sentences per (person, attribute), templates drawn at random
    # Training question phrasings per attribute (the first this many of its
    # list, 1 to 4), each asked once per fact in training; the held-out
    # phrasing is never trained on.
    question_phrasings: int = 2
    # Popularity: this fraction of the people (drawn at random) is written about
    # popular_factor times as often (each of their sentences repeated), as real
    # corpora mention some people far more than others. Every fact is still
    # evaluated once.
    popular_fraction: float = 0.0
    popular_factor: int = 1
    seed: int = 0


@dataclass
class BioCorpus:
    """Token ids for training and evaluation, and the vocabulary."""

    config: BioConfig
    vocab: List[str]
    train: List[List[int]]  # bio sentences and training-phrasing Q&A, each <bos> ... <eos>
    eval_prompts: Dict[str, List[List[int]]]  # "train_phrasing" / "held_out": <bos> ... A :
    eval_answers: Dict[str, List[int]]  # the value token each prompt should be followed by
    facts: List[Tuple[str, str, str]] = field(default_factory=list)  # (person, attribute, value)

    @property
    def pad(self) -> int:
        return 0

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)


def make_corpus(cfg: BioConfig) -> BioCorpus:
    if cfg.people > cfg.first_names * cfg.last_names:
        raise ValueError(f"BioConfig: {cfg.people} people need at least as many name pairs; got "
                         f"{cfg.first_names} x {cfg.last_names}")
    if not 0.0 <= cfg.popular_fraction <= 1.0 or cfg.popular_factor < 1:
        raise ValueError(f"BioConfig: popular_fraction must be in [0, 1] and popular_factor >= 1; got "
                         f"{cfg.popular_fraction} and {cfg.popular_factor}")
    if not 1 <= cfg.question_phrasings <= 4:
        raise ValueError(f"BioConfig: question_phrasings must be in [1, 4]; got {cfg.question_phrasings}")
    unknown = [a for a in cfg.attributes if a not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"BioConfig: unknown attributes {unknown}; known: {sorted(ATTRIBUTES)}")
    rng = random.Random(cfg.seed)
    taken: set = set()
    firsts = _words(rng, cfg.first_names, 2, taken)
    lasts = _words(rng, cfg.last_names, 2, taken)
    pairs = rng.sample([(f, l) for f in firsts for l in lasts], cfg.people)
    # Drawn from a generator of their own, so popularity changes how often the
    # facts are written, not which facts there are.
    popular = set(random.Random(f"{cfg.seed}-popular").sample(range(cfg.people),
                                                              round(cfg.popular_fraction * cfg.people)))
    values: Dict[str, List[str]] = {}
    for attr in cfg.attributes:
        kind = ATTRIBUTES[attr][0]
        if kind == "year":
            values[attr] = [str(1900 + i) for i in range(cfg.values_per_attribute)]
        else:
            values[attr] = _words(rng, cfg.values_per_attribute, 2, taken)

    vocab = list(SPECIALS)
    index: Dict[str, int] = {w: i for i, w in enumerate(vocab)}

    def ids(text: str) -> List[int]:
        out = []
        for w in text.split():
            if w not in index:
                index[w] = len(vocab)
                vocab.append(w)
            out.append(index[w])
        return out

    train: List[List[int]] = []
    prompts: Dict[str, List[List[int]]] = {"train_phrasing": [], "held_out": []}
    answers: Dict[str, List[int]] = {"train_phrasing": [], "held_out": []}
    facts = []
    bos, eos = index["<bos>"], index["<eos>"]
    for person, (first, last) in enumerate(pairs):
        name = f"{first} {last}"
        copies = cfg.popular_factor if person in popular else 1
        for attr in cfg.attributes:
            _, bio_t, q_all, q_held = ATTRIBUTES[attr]
            q_train = q_all[:cfg.question_phrasings]
            value = rng.choice(values[attr])
            facts.append((name, attr, value))
            sentences = [t.format(n=name, v=value) for t in rng.choices(bio_t, k=cfg.bios_per_fact)]
            sentences += [q.format(n=name) + " " + value for q in q_train]
            train.extend([bos] + ids(text) + [eos] for text in sentences for _ in range(copies))
            q = rng.choice(q_train)
            prompts["train_phrasing"].append([bos] + ids(q.format(n=name)))
            answers["train_phrasing"].append(index[value])
            prompts["held_out"].append([bos] + ids(q_held[0].format(n=name)))
            answers["held_out"].append(index[value])
    rng.shuffle(train)
    return BioCorpus(cfg, vocab, train, prompts, answers, facts)


def pad_batch(seqs: Sequence[Sequence[int]], pad: int = 0) -> torch.Tensor:
    """[len(seqs), longest] int64, padded on the right."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out
