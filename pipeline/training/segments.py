"""Training data from token shards: whole pieces laid end to end in batch rows, cut into segments that carry memory.

Each segment comes with every token's position in its piece, so that the model attends to nothing of an earlier
piece (a piece starts from an empty past, as in evaluation and generation), and, when asked, each token's composer
label: its piece's, or 0 ("none") for the pieces that label dropout picks in that epoch, and the texture of the
window of its piece it falls in (pipeline/music/texture.py), its piece as transposed. The piano state that a
state-input model reads is computed from the tokens on the device (pipeline/training/batches.py); a segment that
resumes an epoch midway brings the tokens that state must replay. Imports only numpy and the standard library, so the
train path runs where polars, symusic and dvc are missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PipelineError
from pipeline.music.performance_encoding import PIECE_START
from pipeline.music.texture import padded_tracks, texture_track, token_windows, transposed
from pipeline.token_folder import PieceStore


def pitch_ranges(vocab: dict) -> list[tuple[int, int]]:
    """(first id, count) of the event ranges indexed by pitch (NOTE_ON and NOTE_OFF), which transposition moves."""
    return [(e["first_id"], e["count"]) for e in vocab["events"] if e.get("meaning") == "pitch"]


def transpose(tokens: np.ndarray, semitones: int, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Shift every pitch-indexed token by `semitones`; a piece that would leave its range is returned unchanged."""
    if semitones == 0 or not ranges or len(tokens) == 0:
        return tokens
    size = max(int(tokens.max()) + 1, *(first + count for first, count in ranges))
    moved, leaves = np.arange(size), np.zeros(size, bool)  # what each id becomes; the ids that would leave a range
    for first, count in ranges:
        moved[first : first + count] += semitones
        leaves[first : first + count] = (moved[first : first + count] < first) | (
            moved[first : first + count] >= first + count
        )
    if leaves[tokens].any():  # two lookups per token: the epoch's rows are laid in a fraction of a second
        return tokens
    return moved.astype(tokens.dtype)[tokens]


@dataclass
class Segment:
    """One segment of the batch rows asked for: inputs, next-token targets, positions in their pieces, and labels."""

    tokens: np.ndarray  # [rows, tgt_len]
    targets: np.ndarray  # [rows, tgt_len]
    seq_pos: np.ndarray  # [rows, tgt_len]: 0 at a PIECE_START, counting on from there
    labels: np.ndarray | None = None  # [rows, tgt_len]: each token's piece's label (0: none), when the stream has them
    # [rows, n]: on the first segment of an epoch resumed midway, the tokens of each row's current pieces before it,
    # which a piano state replays (None otherwise: an epoch's rows begin with a PIECE_START)
    before: np.ndarray | None = None
    texture: np.ndarray | None = None  # [rows, tgt_len, TRACK_COLUMNS]: each token's row of its track, if asked


@dataclass
class EpochRows:
    """An epoch's batch rows: the tokens, and for each token the index of its piece in the store and of its texture
    window in the piece, which the tables of each piece's label and texture this epoch are indexed by."""

    tokens: np.ndarray  # [rows, length]
    owner: np.ndarray  # [rows, length]
    labels: np.ndarray  # [pieces]: 0 where label dropout picked the piece, or where there are no labels
    window: np.ndarray | None = None  # [rows, length]: each token's window (music/texture.py), when asked for
    textures: np.ndarray | None = None  # [pieces, windows, TRACK_COLUMNS]: each piece's track, as transposed


@dataclass
class SegmentStream:
    """Segments [rows, tgt_len] of inputs and next-token targets. Each row is a stream of whole pieces, shuffled
    per epoch with `seed`, so the memory of a row's last segment is the true past of its next one."""

    store: PieceStore
    batch_size: int
    tgt_len: int
    seed: int = 0
    max_transpose: int = 0
    ranges: tuple = ()
    state_input: bool = False  # the model reads the piano state after each token (computed on the device)
    labels: bool = False  # each segment carries each token's label (the index's `label` column)
    label_dropout: float = 0.0  # the share of pieces whose label is 0 in an epoch (drawn per piece and epoch)
    texture_input: bool = False  # each segment carries the texture of each token's window (music/texture.py)
    ahead: bool = False  # lay the next epoch's rows in a background thread while this epoch trains
    _next: dict[int, Future] = field(default_factory=dict, init=False, repr=False, compare=False)
    _tracks: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def rows(self, epoch: int) -> np.ndarray:
        """This epoch's token streams, one per batch row, cut to the shortest row's length."""
        return self.laid(epoch).tokens

    def rows_and_labels(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """This epoch's token streams and each token's label (None without labels)."""
        laid = self.laid(epoch)
        return laid.tokens, laid.labels[laid.owner] if self.labels else None

    def laid(self, epoch: int) -> EpochRows:
        """This epoch's rows: each a stream of whole pieces in the epoch's order, transposed as the epoch draws, cut
        to the shortest row's length. Label dropout draws from its own generator, so the tokens do not depend on it."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.store))
        shifts = rng.integers(-self.max_transpose, self.max_transpose + 1, size=len(order))
        streams: list[list[np.ndarray]] = [[] for _ in range(self.batch_size)]
        owners: list[list[np.ndarray]] = [[] for _ in range(self.batch_size)]
        windows: list[list[np.ndarray]] = [[] for _ in range(self.batch_size)]
        tracks, counts = self._texture_tracks() if self.texture_input else (None, None)
        moved = np.zeros(len(order), np.int64)  # the semitones each piece was moved by
        filled = np.zeros(self.batch_size, np.int64)
        owner_type = np.int16 if len(order) <= np.iinfo(np.int16).max else np.int32  # as compact as the tokens
        for i, shift in zip(order.tolist(), shifts.tolist(), strict=True):
            row = int(np.argmin(filled))  # the emptiest row takes the next piece: rows stay near equal length
            original = self.store.piece(i)
            piece = transpose(original, shift, list(self.ranges))
            moved[i] = shift if piece is not original else 0  # transpose returns a piece it leaves as it is
            streams[row].append(piece)
            owners[row].append(np.full(len(piece), i, owner_type))
            if counts is not None:  # int16 too: a window is ten seconds
                windows[row].append(token_windows(piece, int(counts[i])).astype(np.int16))
            filled[row] += len(piece)
        length = int(filled.min())
        if length < self.tgt_len + 1:
            raise PipelineError(
                f"{self.store.total_tokens:,} tokens cannot fill {self.batch_size} rows of at least "
                f"{self.tgt_len + 1} tokens: lower the batch size or tgt_len"
            )
        tokens = np.stack([np.concatenate(s)[:length] for s in streams])
        owner = np.stack([np.concatenate(s)[:length] for s in owners])
        if tracks is None:
            return EpochRows(tokens, owner, self._labels(epoch))
        window = np.stack([np.concatenate(s)[:length] for s in windows])
        return EpochRows(tokens, owner, self._labels(epoch), window, transposed(tracks, moved))

    def _laid(self, epoch: int) -> EpochRows:
        """This epoch's rows (laid in the background if `ahead` asked for them), and the next epoch's started."""
        laid = self._next.pop(epoch, None)
        rows = laid.result() if laid is not None else self.laid(epoch)
        if self.ahead:  # numpy's copies release the GIL: the training thread goes on meanwhile
            self._next = {epoch + 1: _LAYER.submit(self.laid, epoch + 1)}
        return rows

    def _texture_tracks(self) -> tuple[np.ndarray, np.ndarray]:
        """Each stored piece's texture track [pieces, windows, TRACK_COLUMNS] (a shorter one carried on past its end)
        and its window count [pieces], computed once."""
        if self._tracks is None:
            tracks = [texture_track(self.store.piece(i)) for i in range(len(self.store))]
            self._tracks = padded_tracks(tracks), np.array([len(t) for t in tracks])
        return self._tracks

    def _labels(self, epoch: int) -> np.ndarray:
        """Each piece's label this epoch: the index's, or 0 where label dropout picks the piece (zeros without
        labels)."""
        if not self.labels:
            return np.zeros(len(self.store), np.int64)
        if "label" not in self.store.index:
            raise PipelineError(f"{self.store.folder / 'index.json'}: no 'label' column (rerun the tokenize stage)")
        label = np.asarray(self.store.index["label"], np.int64)
        dropped = np.random.default_rng([self.seed, epoch, 1]).random(len(label)) < self.label_dropout
        return np.where(dropped, 0, label)

    def batches(self, epoch: int = 0, start: int = 0, rows: slice = slice(None)) -> Iterator[tuple[int, Segment]]:
        """(segment number, segment of the batch rows `rows`) from segment `start` of `epoch` to the end of the
        epoch; a process of several takes its own rows, so it does no work for the others'."""
        laid = self._laid(epoch)
        streams, owner = laid.tokens[rows], laid.owner[rows]
        window = None if laid.window is None else laid.window[rows]
        first = start * self.tgt_len
        # Where each row's current piece began: the state of a segment depends on its piece so far, no further.
        piece_begin = np.array([_last_piece_start(row, first) for row in streams])
        before = streams[:, piece_begin.min() : first] if self.state_input and first > 0 else None
        position = first - piece_begin  # of each row's next token in its piece
        span = np.arange(self.tgt_len)
        for k in range(start, (streams.shape[1] - 1) // self.tgt_len):
            a = k * self.tgt_len
            x, y = streams[:, a : a + self.tgt_len], streams[:, a + 1 : a + self.tgt_len + 1]
            last = np.maximum.accumulate(np.where(x == PIECE_START, span, -1), axis=1)
            seq_pos = np.where(last >= 0, span - last, position[:, None] + span)
            position = seq_pos[:, -1] + 1
            pieces = owner[:, a : a + self.tgt_len]
            labels = laid.labels[pieces] if self.labels else None
            texture = None if window is None else laid.textures[pieces, window[:, a : a + self.tgt_len]]
            yield k, Segment(x, y, seq_pos, labels, before if k == start else None, texture)


_LAYER = ThreadPoolExecutor(1, thread_name_prefix="segments")  # lays epochs ahead, one at a time


def _last_piece_start(row: np.ndarray, end: int) -> int:
    """The index of the last PIECE_START in row[:end] (0 when there is none: a row begins with a piece)."""
    found = np.flatnonzero(row[:end] == PIECE_START)
    return int(found[-1]) if len(found) else 0
