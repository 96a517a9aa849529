"""Composers as labels: side information for the model, never a token. Composers with at least a given number of
train pieces have labels 1, 2, ... (most pieces first), and every other composer, joint credits such as "Franz
Schubert / Franz Liszt" included, shares the last one. Label 0 is left for "no composer given". The tokenize stage
writes the labels to vocab.json and each piece's to the index; generation finds a label by the composer's name.
"""

from __future__ import annotations

from collections import Counter

from pipeline.errors import PipelineError

OTHER_COMPOSERS = "other composers"
UNLABELLED = "none"  # in generate.composers: samples with no composer given (label 0)
ANY = "any"  # the listening page's word for the same choice


def composer_labels(split: list[str], composer: list[str], min_pieces: int) -> list[dict]:
    """The labels of vocab.json: {label, composer, pieces per split} for each composer with at least `min_pieces`
    train pieces (most first, then by name), then one for all other composers; label i is the list's i-th, from 1."""
    train = Counter(c for s, c in zip(split, composer, strict=True) if s == "train" and "/" not in c)
    own = sorted((c for c, n in train.items() if n >= min_pieces), key=lambda c: (-train[c], c))
    names = [*own, OTHER_COMPOSERS]
    counts = {name: Counter() for name in names}
    for s, c in zip(split, composer, strict=True):
        counts[c if c in own else OTHER_COMPOSERS][s] += 1
    return [{"label": i, "composer": name, "pieces": dict(sorted(counts[name].items()))}
            for i, name in enumerate(names, 1)]  # fmt: skip


def label_of(composer: str, labels: list[dict]) -> int:
    """A composer's label in `labels` (composer_labels), the shared one for a composer without its own."""
    own = {entry["composer"]: entry["label"] for entry in labels}
    return own.get(composer, own[OTHER_COMPOSERS])


def unlabelled(name: str) -> bool:
    """Whether a composer choice asks for no composer (label 0): none, any, or nothing at all."""
    return str(name).strip().lower() in (UNLABELLED, ANY, "")


def resolve(names: list[str], labels: list[dict]) -> list[tuple[int, str | None]]:
    """(label, composer) for each name: matched case-insensitively on the full name or the surname, or label 0 for a
    choice that is `unlabelled`; an unknown name is a PipelineError that lists the composers there are."""
    found = []
    for name in names:
        wanted = str(name).strip().lower()
        if unlabelled(name):
            found.append((0, None))
            continue
        matches = [
            entry for entry in labels if wanted in (entry["composer"].lower(), entry["composer"].split()[-1].lower())
        ]
        if not matches:
            known = ", ".join(entry["composer"] for entry in labels)
            raise PipelineError(f"unknown composer {name!r}: the model knows {known} (and {UNLABELLED})")
        found.append((matches[0]["label"], matches[0]["composer"]))
    return found
