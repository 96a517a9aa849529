"""The evaluate stage: Transformer-XL's protocol against independent forward passes, the metrics file, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, write_tokens

from model import AttnSpan, TransformerXL, TransformerXLConfig
from pipeline.errors import PipelineError
from pipeline.evaluate import HELD_OUT, evaluate, score_pieces
from pipeline.model_folder import export_model
from pipeline.music.performance_encoding import PIECE_END, PIECE_START, VOCAB_SIZE
from pipeline.ngram import KneserNey, unigram_log_probs
from pipeline.params import EvaluateParams
from pipeline.training.cpu_profile import for_evaluation


def tiny_model(**overrides) -> TransformerXL:  # noqa: ANN003
    torch.manual_seed(0)
    cfg = dict(n_layer=2, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=8, mem_len=8)
    model = TransformerXL(TransformerXLConfig(vocab_size=VOCAB_SIZE, **{**cfg, **overrides})).eval()
    with torch.no_grad():  # global biases away from zero, so that both take part
        model.r_w_bias.normal_(0, 0.5)
        model.r_r_bias.normal_(0, 0.5)
    return model


def random_pieces(seed: int, count: int, low: int = 5, high: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([[PIECE_START], rng.integers(0, 388, size=int(n)), [PIECE_END]]).astype(np.int64)
        for n in rng.integers(low, high, size=count)
    ]


def one_pass_nll(model: TransformerXL, piece: np.ndarray) -> np.ndarray:
    """Per-token NLL from one forward pass over the whole piece, with no memory."""
    x = torch.from_numpy(piece[None, :-1])
    with torch.no_grad():
        logits, _, _ = model(x)
    log_probs = torch.log_softmax(logits.float(), -1)[0]
    return -log_probs.gather(-1, torch.from_numpy(piece[1:])[:, None])[:, 0].double().numpy()


def one_pass_logits(model: TransformerXL, piece: np.ndarray) -> torch.Tensor:
    """Logits at every position of the piece but the last, from one forward pass with no memory: [len - 1, vocab]."""
    with torch.no_grad():
        logits, _, _ = model(torch.from_numpy(piece[None, :-1]))
    return logits.float()[0]


def one_pass_correct(model: TransformerXL, piece: np.ndarray) -> np.ndarray:
    """Whether the most likely token at each position is the next token of the piece, from one pass with no memory.

    Asserts that no two top logits nearly tie, so that the argmax is the same however the pass is split up."""
    logits = one_pass_logits(model, piece)
    top2 = logits.topk(2, dim=-1).values
    assert bool((top2[:, 0] - top2[:, 1] > 1e-4).all()), "a near tie: choose another seed"
    return (logits.argmax(-1) == torch.from_numpy(piece[1:])).numpy()


def guessing_model() -> TransformerXL:
    """tiny_model with a small random output bias: with tied embeddings alone, an untrained model's most likely next
    token is nearly always its input token; the bias makes that so only about half the time, so that comparing the
    prediction with the input token and with the next one differ."""
    model = tiny_model()
    with torch.no_grad():
        model.out_bias.normal_(0, 0.15)
    return model


def half_greedy_pieces(model: TransformerXL, seed: int, count: int, low: int = 15, high: int = 45) -> list[np.ndarray]:
    """Pieces where about half the tokens are the model's own most likely next token and the rest random, so that
    scoring them has hits and misses (a tiny untrained model rarely predicts a random token). A token after which
    the two most likely next tokens nearly tie is drawn again, so that every argmax is clear-cut."""
    rng = np.random.default_rng(seed)
    pieces = []
    for n in rng.integers(low, high, size=count):
        piece = [PIECE_START]
        while True:
            logits = one_pass_logits(model, np.array([*piece, 0], np.int64))[-1]
            top2 = logits.topk(2).values
            if top2[0] - top2[1] < 1e-3 and len(piece) > 1:
                piece[-1] = int(rng.integers(0, 388))
            elif len(piece) == n + 1:
                break
            else:
                piece.append(int(logits.argmax()) if rng.random() < 0.5 else int(rng.integers(0, 388)))
        pieces.append(np.array([*piece, PIECE_END], np.int64))
    return pieces


def test_accuracy_counts_the_most_likely_token_against_the_next_token():
    model = guessing_model()
    model.cfg = dataclasses.replace(model.cfg, mem_len=128)  # longer than any piece: segments equal a single pass
    pieces = half_greedy_pieces(model, 11, 6)
    expected = [one_pass_correct(model, piece) for piece in pieces]
    hits = np.concatenate(expected)
    assert 0.2 < hits.mean() < 0.8  # hits and misses both, so that a wrong comparison shows
    inputs = np.concatenate([one_pass_logits(model, piece).argmax(-1).numpy() == piece[:-1] for piece in pieces])
    assert (inputs != hits).mean() > 0.2  # guessing the input token is often right where guessing the next is not
    for tgt_len, batch_size in ((64, 3), (7, 1), (7, 4)):  # one segment per piece; several, alone and batched
        scores = score_pieces(model, pieces, tgt_len=tgt_len, batch_size=batch_size)
        for want, got in zip(expected, scores.correct, strict=True):
            assert got.dtype == bool and got.tolist() == want.tolist()


def test_pieces_that_fit_one_window_score_as_one_forward_pass_each():
    model = tiny_model()
    pieces = random_pieces(1, 7)
    scores = score_pieces(model, pieces, tgt_len=64, batch_size=3)  # every piece fits one segment
    for piece, nll, correct in zip(pieces, scores.nll, scores.correct, strict=True):
        assert len(nll) == len(correct) == len(piece) - 1  # every token after PIECE_START, once
        np.testing.assert_allclose(nll, one_pass_nll(model, piece), rtol=1e-5, atol=1e-5)


def test_segments_with_a_long_memory_equal_a_single_pass_and_batching_changes_nothing():
    model = tiny_model()
    model.cfg = dataclasses.replace(model.cfg, mem_len=128)  # longer than any piece: nothing is forgotten
    pieces = random_pieces(2, 9)
    alone = score_pieces(model, pieces, tgt_len=7, batch_size=1)
    batched = score_pieces(model, pieces, tgt_len=7, batch_size=4)  # pieces of unequal length side by side
    for piece, a, b in zip(pieces, alone.nll, batched.nll, strict=True):
        np.testing.assert_allclose(a, one_pass_nll(model, piece), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert [c.tolist() for c in alone.correct] == [c.tolist() for c in batched.correct]


def test_a_short_memory_forgets_what_a_long_one_remembers():
    model = tiny_model()
    piece = random_pieces(3, 1, low=50, high=51)
    short = score_pieces(model, piece, tgt_len=5, batch_size=1).nll[0]
    np.testing.assert_allclose(short[:10], one_pass_nll(model, piece[0])[:10], rtol=1e-5, atol=1e-5)  # mem 8 + 5
    assert not np.allclose(short[20:], one_pass_nll(model, piece[0])[20:], atol=1e-4)


@pytest.fixture
def folder(tmp_path):
    """Token splits (train with a stretched copy of each piece, validation) and a tiny trained-shape model."""
    rng = np.random.default_rng(5)
    phrase = rng.integers(0, 388, size=12)
    train = [np.tile(phrase, 4) for _ in range(6)]
    validation = [np.concatenate([np.tile(phrase, 2), rng.integers(0, 388, size=9)]) for _ in range(5)]
    tokens = write_tokens(tmp_path / "tokens", {"train": train, "validation": validation})
    index = json.loads((tokens / "train" / "index.json").read_text())
    index["stretch"] = [1.0, 1.05] * 3  # the baselines must see only the unstretched half
    (tokens / "train" / "index.json").write_text(json.dumps(index))
    export_model(tiny_model(), tmp_path / "model")
    return tmp_path


def params(**overrides) -> EvaluateParams:  # noqa: ANN003
    defaults = dict(tgt_len=16, mem_len=64, batch_size=2, ngram_order=3, device="cpu", precision="float32")
    return EvaluateParams(**{**defaults, **overrides})


def test_the_stage_writes_every_figure_of_the_validation_split(folder, capsys):
    result = evaluate(folder / "tokens", folder / "model", folder / "eval.json", params())
    assert "the data has no test split" in capsys.readouterr().out  # reported, not an error
    assert json.loads((folder / "eval.json").read_text()) == result and list(result) == ["validation"]
    m = result["validation"]
    index = json.loads((folder / "tokens" / "validation" / "index.json").read_text())
    pieces = [
        np.load(folder / "tokens" / "validation" / "shard-00000.npy")[s : s + n].astype(np.int64)
        for s, n in zip(index["start"], index["length"], strict=True)
    ]
    model = tiny_model()
    model.cfg = dataclasses.replace(model.cfg, mem_len=64, same_length=True)
    per_piece = [one_pass_nll(model, p) for p in pieces]  # every piece fits mem_len + tgt_len
    nll = np.concatenate(per_piece)
    assert m["tokens"] == len(nll) == sum(index["length"]) - len(pieces)
    assert m["nll"] == pytest.approx(nll.mean(), abs=1e-4)
    assert m["bits_per_token"] == pytest.approx(nll.mean() / math.log(2), abs=1e-4)
    assert m["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-4)
    assert m["seconds"] == pytest.approx(sum(index["seconds"]))
    assert m["nats_per_second"] == pytest.approx(nll.sum() / sum(index["seconds"]), rel=1e-4)
    assert 0 <= m["accuracy"] <= 1
    composers = {
        c: np.concatenate([n for n, k in zip(per_piece, index["composer"], strict=True) if k == c])
        for c in set(index["composer"])
    }
    assert m["by_composer"] == pytest.approx({c: v.mean() for c, v in composers.items()}, abs=1e-4)

    # Baselines: fit on the unstretched train copies only, scored on the same tokens.
    train_index = json.loads((folder / "tokens" / "train" / "index.json").read_text())
    shard = np.load(folder / "tokens" / "train" / "shard-00000.npy").astype(np.int64)
    kept = [
        shard[s : s + n]
        for s, n, f in zip(train_index["start"], train_index["length"], train_index["stretch"], strict=True)
        if f == 1.0
    ]
    corpus, lengths = np.concatenate(kept), np.array([len(p) for p in kept])
    kn = KneserNey(3, VOCAB_SIZE, PIECE_START).fit(corpus, lengths)
    held_out, held_lengths = np.concatenate(pieces), np.array([len(p) for p in pieces])
    unigram = unigram_log_probs(corpus, lengths, VOCAB_SIZE)
    assert m["baselines"]["kneser_ney"] == pytest.approx(-kn.log_probs(held_out, held_lengths).mean(), abs=1e-5)
    assert m["baselines"]["unigram"] == pytest.approx(
        -np.concatenate([unigram[p[1:]] for p in pieces]).mean(), abs=1e-5
    )
    assert m["baselines"]["uniform"] == pytest.approx(math.log(VOCAB_SIZE))
    assert m["baselines"]["kneser_ney"] < 2.0 < m["baselines"]["unigram"]  # the repeated phrase is predictable


def test_the_stage_reports_accuracy_as_the_share_of_next_tokens_predicted(tmp_path):
    model = guessing_model()
    validation = half_greedy_pieces(model, 12, 5)  # each fits mem_len + tgt_len: scored as one pass
    bodies = {"train": [p[1:-1] for p in random_pieces(4, 3)], "validation": [p[1:-1] for p in validation]}
    tokens = write_tokens(tmp_path / "tokens", bodies)
    export_model(model, tmp_path / "model")
    result = evaluate(tokens, tmp_path / "model", tmp_path / "eval.json", params())
    model.cfg = dataclasses.replace(model.cfg, mem_len=64, same_length=True)  # as params() evaluates
    hits = np.concatenate([one_pass_correct(model, piece) for piece in validation])  # write_tokens keeps the ends
    assert 0.2 < hits.mean() < 0.8 and result["validation"]["tokens"] == len(hits)
    assert result["validation"]["accuracy"] == round(float(hits.mean()), 5)
    assert json.loads((tmp_path / "eval.json").read_text()) == result


def test_a_test_split_is_scored_when_the_data_has_one(folder):
    bodies = {split: [p[1:-1] for p in random_pieces(seed, 3)] for seed, split in enumerate(HELD_OUT + ("train",))}
    result = evaluate(write_tokens(folder / "tokens2", bodies), folder / "model", folder / "eval.json", params())
    assert list(result) == ["validation", "test"]
    assert result["test"]["tokens"] == sum(len(p) + 1 for p in bodies["test"])  # PIECE_START ... PIECE_END


def test_bad_input_is_a_clear_error(folder, tmp_path):
    with pytest.raises(PipelineError, match="no trained model there"):
        evaluate(folder / "tokens", tmp_path / "nowhere", folder / "eval.json", params())
    write_tokens(folder / "only-train", {"train": random_pieces(9, 3)})
    with pytest.raises(PipelineError, match="no validation split"):
        evaluate(folder / "only-train", folder / "model", folder / "eval.json", params())
    with pytest.raises(PipelineError, match="out of range"):
        evaluate(folder / "tokens", folder / "model", folder / "eval.json", params(tgt_len=0))
    assert not (folder / "eval.json").exists()  # nothing half-written

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "evaluate",
            "--tokens",
            str(folder / "tokens"),
            "--model",
            str(tmp_path / "nowhere"),
            "--metrics",
            str(folder / "eval.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no trained model there" in result.stderr


def test_cpu_limits_cap_the_evaluation():
    p, lowered = for_evaluation(
        EvaluateParams(tgt_len=512, mem_len=2048, cpu_limits={"tgt_len": 128, "mem_len": "4096"})
    )
    assert (p.tgt_len, p.mem_len) == (128, 2048) and lowered == ["tgt_len 512 → 128"]
    with pytest.raises(PipelineError, match="unknown evaluate.cpu_limits params: memory"):
        for_evaluation(EvaluateParams(cpu_limits={"memory": 1}))


def test_a_model_with_the_state_input_scores_each_piece_with_its_own_piano_state():
    from pipeline.music.piano_state import PIANO_STATE_SIZE, piano_state

    model = tiny_model(side_size=PIANO_STATE_SIZE).double()
    with torch.no_grad():
        model.side_net.weight.normal_(0, 0.3)
        model.side_logits.weight.normal_(0, 0.3)
    model.cfg = dataclasses.replace(model.cfg, mem_len=128)  # longer than any piece: segments equal one pass
    rng = np.random.default_rng(4)
    pieces = [np.concatenate([[PIECE_START], rng.choice([60, 62, 188, 190, 300, 350, 370], n), [PIECE_END]])
              for n in (40, 9, 70, 23)]  # fmt: skip
    scores = score_pieces(model, pieces, tgt_len=8, batch_size=3)  # rows end at different segments
    for piece, nll in zip(pieces, scores.nll, strict=True):
        side = torch.from_numpy(piano_state(piece[:-1])[None]).double()
        with torch.no_grad():
            logits, _, _ = model(torch.from_numpy(piece[None, :-1]), side=side)
        expected = -torch.log_softmax(logits, -1)[0].gather(-1, torch.from_numpy(piece[1:])[:, None])[:, 0]
        np.testing.assert_allclose(nll, expected.numpy(), rtol=1e-6, atol=1e-6)
        assert side[0, :, :128].sum() > 0  # keys do sound in these pieces, so the state takes part


def test_piece_start_nll_is_the_nll_of_each_pieces_first_64_tokens():
    from pipeline.evaluate import PIECE_START_TOKENS, Scores, split_metrics

    rng = np.random.default_rng(1)
    nll = [rng.uniform(0, 5, n) for n in (200, 30, 64, 65)]
    store = type("Store", (), {"index": {"seconds": [1.0] * 4, "composer": ["A"] * 4}})()
    m = split_metrics(Scores(nll, [np.zeros(len(n), bool) for n in nll]), store, {}, VOCAB_SIZE)
    opening = [x for piece in nll for x in piece[:64]]
    assert PIECE_START_TOKENS == 64 and len(opening) == 64 + 30 + 64 + 64
    assert m["piece_start_nll"] == pytest.approx(np.mean(opening), abs=1e-5)
    assert m["piece_start_nll"] != pytest.approx(m["nll"], abs=1e-3)


def test_the_evaluation_span_is_an_argument_and_the_model_keeps_its_trained_config():
    model = tiny_model()
    trained = model.cfg
    pieces = random_pieces(5, 4, low=20, high=40)
    span = AttnSpan(mem_len=24, same_length=True)
    configured = tiny_model(mem_len=24, same_length=True)  # the same weights (same seed), configured with the span
    given = score_pieces(model, pieces, tgt_len=7, batch_size=2, span=span)
    built_in = score_pieces(configured, pieces, tgt_len=7, batch_size=2)
    for a, b in zip(given.nll, built_in.nll, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.cfg == trained
    as_trained = score_pieces(model, pieces, tgt_len=7, batch_size=2)
    assert any(not np.allclose(a, b) for a, b in zip(as_trained.nll, given.nll, strict=True))  # the span matters


def test_the_stage_scores_with_the_evaluation_span_not_the_trained_one(tmp_path):
    model = tiny_model()  # trained with mem_len 8, same_length off
    with torch.no_grad():  # large weights, so that how far back a token sees shows in its score
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.3)
    validation = random_pieces(8, 4, low=30, high=50)
    bodies = {"train": [p[1:-1] for p in random_pieces(9, 3)], "validation": [p[1:-1] for p in validation]}
    export_model(model, tmp_path / "model")
    p = params(tgt_len=7, mem_len=24, same_length=True)
    result = evaluate(write_tokens(tmp_path / "tokens", bodies), tmp_path / "model", tmp_path / "eval.json", p)
    expected = np.concatenate(score_pieces(model, validation, 7, 2, AttnSpan(24, same_length=True)).nll)
    as_trained = np.concatenate(score_pieces(model, validation, 7, 2).nll)
    assert result["validation"]["nll"] == pytest.approx(expected.mean(), abs=1e-5)
    assert abs(expected.mean() - as_trained.mean()) > 1e-3


def test_identification_names_the_likeliest_label_and_the_majority_is_trains_most_frequent_composer():
    from pipeline.evaluate import identify

    model = tiny_model(n_labels=2)
    with torch.no_grad():
        model.label_emb.weight[1:].normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    pieces = random_pieces(6, 4, low=20, high=30)
    labels = [
        {"label": 1, "composer": "A", "pieces": {"train": 10}},
        {"label": 2, "composer": "B", "pieces": {"train": 2}},
    ]
    truth = [2, 2, 2, 1]  # the split's most frequent is B; train's is A
    named = identify(model, pieces, truth, labels, params(identify_tokens=12, tgt_len=8))
    scores = [[score_pieces(model, [p[:13]], 8, 1, labels=[label]).nll[0].sum() for label in (1, 2)] for p in pieces]
    best = [1 + int(np.argmin(s)) for s in scores]
    assert named["top1"] == np.mean(np.array(best) == truth) and named["top3"] == 1.0 and named["majority"] == 0.25
    confusion = np.zeros((2, 2), int)
    for t, b in zip(truth, best, strict=True):
        confusion[t - 1, b - 1] += 1
    assert named["confusion"] == confusion.tolist() and named["labels"] == ["A", "B"]


def test_identification_over_four_labels_ranks_on_exactly_its_tokens_and_counts_the_majority_on_train():
    """Four labels, so that top-3 differs from top-2; train's commonest composer neither the first label nor the
    split's; one token to name the composer from, so that a head one token short would know nothing."""
    from pipeline.evaluate import identify

    model = tiny_model(n_labels=4)
    with torch.no_grad():
        model.label_emb.weight[1:].normal_(0, 2.0, generator=torch.Generator().manual_seed(5))
    pieces = random_pieces(11, 8, low=20, high=30)
    ids = [1, 2, 3, 4]
    scores = np.array([[score_pieces(model, [p[:2]], 8, 1, labels=[label]).nll[0].sum() for label in ids]
                       for p in pieces])  # fmt: skip
    ranked = np.array(ids)[np.argsort(scores, axis=1, kind="stable")]  # each piece's labels, likeliest first
    rank_of_truth = [0, 2, 1, 3, 2, 0, 1, 2]  # the true composer's place among the four, piece by piece
    truth = [int(ranked[i, r]) for i, r in enumerate(rank_of_truth)]
    labels = [{"label": label, "composer": name, "pieces": {"train": n, "validation": 9 - n}}
              for label, name, n in zip(ids, "ABCD", (3, 2, 8, 1), strict=True)]  # fmt: skip
    named = identify(model, pieces, truth, labels, params(identify_tokens=1, tgt_len=8))
    assert named["top1"] == np.mean(np.array(rank_of_truth) == 0) == 0.25
    assert named["top3"] == np.mean(np.array(rank_of_truth) < 3) == 0.875  # over the top 2 it would be 0.625
    assert named["majority"] == round(float(np.mean(np.array(truth) == 3)), 4)  # C: the most train pieces
    assert named["tokens"] == 1 and named["pieces"] == 8
    # Here A (the first label) and the split's commonest label are not C: a majority counted on either differs.
    assert max(ids, key=truth.count) != 3 and truth.count(1) != truth.count(3)


def test_nll_is_unconditional_for_a_model_with_labels_and_nll_labelled_gives_each_piece_its_composer(folder):
    model = tiny_model(n_labels=2)
    with torch.no_grad():  # labels that tell the phrase: one of them lowers the NLL a great deal
        model.label_emb.weight[1:].normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
    export_model(model, folder / "labelled")
    tokens = folder / "tokens"
    m = evaluate(tokens, folder / "labelled", folder / "eval.json", params())["validation"]
    index = json.loads((tokens / "validation" / "index.json").read_text())
    shard = np.load(tokens / "validation" / "shard-00000.npy").astype(np.int64)
    pieces = [shard[s : s + n] for s, n in zip(index["start"], index["length"], strict=True)]
    span = AttnSpan(64, same_length=True)
    free = np.concatenate(score_pieces(model, pieces, 16, 2, span).nll).mean()
    given = np.concatenate(score_pieces(model, pieces, 16, 2, span, index["label"]).nll).mean()
    assert m["nll"] == pytest.approx(free, abs=1e-5) and m["nll_labelled"] == pytest.approx(given, abs=1e-5)
    assert abs(free - given) > 1e-3  # the two differ, so each is checked against its own
    assert m["label_gain"] == pytest.approx(free - given, abs=2e-5)


def labelled_folder(folder: Path) -> tuple[TransformerXL, list[np.ndarray], list[int]]:
    """A tiny model whose labels tell the phrase, exported to FOLDER/labelled, and the validation pieces with labels."""
    model = tiny_model(n_labels=2)
    with torch.no_grad():
        model.label_emb.weight[1:].normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
    export_model(model, folder / "labelled")
    index = json.loads((folder / "tokens" / "validation" / "index.json").read_text())
    shard = np.load(folder / "tokens" / "validation" / "shard-00000.npy").astype(np.int64)
    return model, [shard[s : s + n] for s, n in zip(index["start"], index["length"], strict=True)], index["label"]


def test_the_labelled_nll_and_its_gain_cover_each_pieces_first_label_tokens(folder):
    model, pieces, labels = labelled_folder(folder)
    m = evaluate(folder / "tokens", folder / "labelled", folder / "eval.json", params(label_tokens=5))["validation"]
    span = AttnSpan(64, same_length=True)  # independently: whole pieces scored with and without labels, then cut
    free, given = (score_pieces(model, pieces, 16, 2, span, use).nll for use in (None, labels))
    head_free, head_given = (np.concatenate([nll[:5] for nll in scored]) for scored in (free, given))
    assert m["labelled_tokens"] == len(head_given) == 5 * len(pieces) < len(np.concatenate(free))
    assert m["nll_labelled"] == pytest.approx(head_given.mean(), abs=1e-5)
    assert m["label_gain"] == pytest.approx(head_free.mean() - head_given.mean(), abs=2e-5)
    assert abs(m["label_gain"] - (np.concatenate(free).mean() - head_given.mean())) > 1e-4  # the same tokens, not all
    assert m["labelled_share"] == round(5 * len(pieces) / len(np.concatenate(free)), 4)
    assert m["nll"] == pytest.approx(np.concatenate(free).mean(), abs=1e-5)  # the headline: every token
    composers = json.loads((folder / "tokens" / "validation" / "index.json").read_text())["composer"]
    for composer in set(composers):
        mine = [i for i, c in enumerate(composers) if c == composer]
        gain = np.concatenate([free[i][:5] - given[i][:5] for i in mine]).mean()
        assert m["by_composer_gain"][composer] == pytest.approx(gain, abs=2e-5)


def test_bf16_moves_the_nll_a_little_says_so_and_auto_follows_the_hardware(folder, monkeypatch):
    def run(**overrides) -> dict:  # noqa: ANN003
        return evaluate(folder / "tokens", folder / "model", folder / "eval.json", params(**overrides))["validation"]

    f32, bf16 = run(precision="float32"), run(precision="bfloat16")
    assert (f32["precision"], bf16["precision"]) == ("float32", "bfloat16")
    assert f32["nll"] != bf16["nll"] and abs(f32["nll"] - bf16["nll"]) < 0.02  # bf16 did run, and stays close
    monkeypatch.setattr("model.device.cpu_has_bf16", lambda: False)
    assert run(precision="auto")["precision"] == "float32"
    monkeypatch.setattr("model.device.cpu_has_bf16", lambda: True)
    assert run(precision="auto")["precision"] == "bfloat16"
    with pytest.raises(PipelineError, match="^evaluate.precision must be one of auto, bfloat16, float32, not 'half'"):
        run(precision="half")
    with pytest.raises(PipelineError, match="out of range"):
        run(label_tokens=-1)
