"""BERTScore of a text against a reference with a local encoder (torchmetrics), used by the causal-LM module's
``test/bertscore_f1`` and by the offline ``bertscore`` judge of ``tuneloop compare``."""

from __future__ import annotations


class BertScorer:
    """BERTScore F1 (torchmetrics, no baseline rescaling, no IDF) of a candidate against a reference.

    With all-MiniLM-L6-v2 (last layer) a text identical to the reference has F1 1.0, a close paraphrase about
    0.85-0.9 and unrelated text below about 0.2.

    Args:
        model_path: Local encoder directory (already resolved, see ``modules.backbone.resolve_path``).
        num_layers: Hidden layer whose embeddings are compared; ``None`` = the last (6 for MiniLM-L6).
        device: Torch device for the encoder.
    """

    def __init__(self, model_path: str, num_layers: int | None = None, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval().to(device)
        layers = self.model.config.num_hidden_layers
        self.num_layers = layers if num_layers is None else num_layers
        if not 1 <= self.num_layers <= layers:
            raise ValueError(f"BERTScore num_layers must be in 1..{layers} for {model_path}, got {num_layers}")
        self.model_path, self.device = model_path, device

    def similarity(self, candidate: str, reference: str) -> float:
        """BERTScore F1 of one candidate against one reference (0 for an empty candidate or reference)."""
        from torchmetrics.functional.text import bert_score

        if not candidate.strip() or not reference.strip():
            return 0.0
        # One pair per call: torchmetrics 1.9 re-indexes length-sorted batches with the sorting permutation
        # instead of its inverse, which scrambles the pairing of batches of three or more sentences.
        out = bert_score(
            [candidate], [reference], model=self.model, user_tokenizer=self.tokenizer,
            num_layers=self.num_layers, device=self.device, truncation=True, max_length=512,
        )
        return float(out["f1"])
