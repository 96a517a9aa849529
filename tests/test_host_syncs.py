"""No host sync inside the training loop between log intervals, nor in generation between DONE_EVERY checks, with the
default model's inputs (piano state, composer labels, piece masking) and the note-length rule: every call that would
make the host wait for a GPU is counted on the CPU, where the same code runs."""

from __future__ import annotations

import numpy as np
import torch
from conftest import write_tokens
from test_train import TINY_MODEL
from torch.overrides import TorchFunctionMode

from pipeline.params import TrainParams
from pipeline.train import train

# What reads a tensor's value on the host: on a GPU each waits for every kernel queued before it.
READS = {"item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero", "argwhere",
         "masked_select", "unique", "unique_consecutive"}  # fmt: skip


class HostSyncs(TorchFunctionMode):
    """Records every call that reads a tensor's value on the host (a boolean-mask index included), by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = getattr(func, "__name__", "")
        masked = name in ("__getitem__", "__setitem__") and _has_bool_tensor(args[1] if len(args) > 1 else None)
        if name in READS or masked:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _has_bool_tensor(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def test_the_training_loop_reads_nothing_back_between_log_steps(tmp_path):
    rng = np.random.default_rng(0)
    pieces = [rng.choice([60, 64, 67, 188, 192, 195, 300, 330, 360], int(n)) for n in rng.integers(20, 90, 30)]
    tokens = write_tokens(tmp_path / "tokens", {"train": pieces[:24], "validation": pieces[24:]}, composers=("A", "B"))
    model = {**TINY_MODEL, "state_input": True, "composer_labels": True}
    p = TrainParams(steps=7, batch_size=4, grad_accum=2, log_interval=4, eval_interval=100, checkpoint_interval=100)
    p.transpose, p.label_dropout, p.eval_batch_size = 2, 0.2, 2
    counter, marks = HostSyncs(), {}

    def mark(step: int) -> None:  # the reads so far, after each step
        marks[step] = len(counter.calls)

    with counter:
        train(tokens, tmp_path / "ckpt", tmp_path / "model", None, model, p, on_step=mark)
    between = {s: marks[s + 1] - marks[s] for s in range(1, 6)}  # the reads of step s + 1, after step s's hook
    assert between == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0}, counter.calls  # step 4 logs: the loss, read once
    assert marks[7] - marks[6] > 0  # the last step logs and evaluates: the counter does see reads


def test_generation_reads_nothing_back_between_its_checks(tmp_path):
    from model import TransformerXL, TransformerXLConfig
    from model.sampling import DONE_EVERY
    from pipeline.generation.decoding import sample_batch
    from pipeline.generation.primers import Primer
    from pipeline.music.performance_encoding import VOCAB_SIZE
    from pipeline.music.piano_state import PIANO_STATE_SIZE
    from pipeline.params import GenerateParams

    torch.manual_seed(0)
    shape = dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16, mem_len=16)
    model = TransformerXL(TransformerXLConfig(VOCAB_SIZE, **shape, side_size=PIANO_STATE_SIZE, n_labels=2))
    primer = Primer(np.array([388, 60, 300, 64, 330, 128 + 60], np.int64), 0, "test")
    p = GenerateParams(seconds=10.0, max_note_s=0.3, guidance=2.0, stop_at_piece_end=False, temperature=1.0)
    counter, checks = HostSyncs(), []
    with counter:
        sample_batch(model, primer, p, [1, 2, 3], None, label=1, progress=lambda ids: checks.append(len(counter.calls)))
    assert len(checks) >= 4, "too few checks to compare"
    per_interval = np.diff(checks)
    assert (per_interval == 1).all(), (per_interval, counter.calls)  # the one check whether every row has ended
    assert DONE_EVERY > 1
