"""A BERT encoder (absolute positions, GELU, post-LayerNorm: all-MiniLM-L6-v2 and its kind) in plain torch, read
from a model folder's ``model.safetensors`` and ``tokenizer.json``: importing ``transformers`` costs ~1.5 s of
the first report query's 2-s budget; torch, safetensors and tokenizers cost ~0.9 s. Same arithmetic as
``transformers``' BertModel in eval mode: ``tests/test_reports_model.py`` checks that all-MiniLM-L6-v2 on it
gives sentence-transformers' embeddings (float32, texts of 5-256 tokens batched with padding: within 1e-6)."""

from __future__ import annotations

import json
from pathlib import Path


def plain_bert(folder: Path) -> bool:
    """Whether ``folder`` holds a BERT this module runs (else the caller uses ``transformers``)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file())


class Bert:
    """``__call__(input_ids, attention_mask)`` → last hidden states (batch, tokens, hidden), like BertModel."""

    def __init__(self, folder: Path):
        import torch
        from safetensors.torch import load_file

        self.torch = torch
        self.config = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.float() for k, v in weights.items()}
        self.heads = int(self.config["num_attention_heads"])
        self.layers = int(self.config["num_hidden_layers"])
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.hidden_size = int(self.config["hidden_size"])

    def _norm(self, x, name: str):
        return self.torch.nn.functional.layer_norm(x, (x.shape[-1],), self.w[f"{name}.weight"], self.w[f"{name}.bias"],
                                                   self.eps)

    def _linear(self, x, name: str):
        return self.torch.nn.functional.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def __call__(self, input_ids, attention_mask):
        torch, w, F = self.torch, self.w, self.torch.nn.functional
        n, t = input_ids.shape
        positions = torch.arange(t).unsqueeze(0)
        x = w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][positions] \
            + w["embeddings.token_type_embeddings.weight"][torch.zeros_like(input_ids)]
        x = self._norm(x, "embeddings.LayerNorm")
        head = self.hidden_size // self.heads
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{m}").view(n, t, self.heads, head).transpose(1, 2)
                       for m in ("query", "key", "value"))
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
            context = context.transpose(1, 2).reshape(n, t, self.hidden_size)
            x = self._norm(self._linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            inner = F.gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


class Tokenizer:
    """``tokenizer.json`` through the ``tokenizers`` library: truncated ids, then padded torch tensors."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer as Fast

        self.fast = Fast.from_file(str(folder / "tokenizer.json"))
        self.fast.no_padding()
        self.fast.enable_truncation(max_length)
        self.max_length = max_length

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, truncated to max_length (special tokens included)."""
        return [e.ids for e in self.fast.encode_batch(texts)]

    def pad(self, ids: list[list[int]], width: int):
        """(input_ids, attention_mask), (len(ids), width) long tensors: ids left-aligned, zeros after."""
        import torch

        out = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return out, mask
