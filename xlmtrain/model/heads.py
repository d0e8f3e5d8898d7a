"""Task heads over `XLMTransformer`, one per transformers XLM class, with its attribute names.

State dicts therefore map 1:1 onto transformers' (`transformer.*` + the head's own keys). Every head's
`forward` takes the encoder inputs (see `XLMTransformer.encode`) plus its labels, and returns a small
output dataclass whose field names and shapes are those of the transformers output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmtrain.model.config import XLMConfig
from xlmtrain.model.losses import linear_cross_entropy
from xlmtrain.model.tied_embedding import TiedGradSlot
from xlmtrain.model.transformer import (
    EncoderOutput,
    SelectedPositions,
    XLMTransformer,
    init_weights,
)


@dataclass
class LMOutput:
    """`logits` (bs, slen, vocab), or (n_pred, vocab) with `pred_mask`; `loss` = mean CE."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class ClassifierOutput:
    """Sequence classification `(bs, num_labels)`, token classification `(bs, slen, num_labels)` or
    multiple choice `(bs, num_choices)` logits."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class QuestionAnsweringSimpleOutput:
    """Span start / end logits, each (bs, slen)."""

    start_logits: Tensor
    end_logits: Tensor
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    """Training: `loss` only. Inference: the beam outputs (the "log_probs" are softmax probabilities, as in
    transformers): start (bs, start_n_top), end (bs, start_n_top * end_n_top), cls_logits (bs,)."""

    loss: Tensor | None = None
    start_top_log_probs: Tensor | None = None
    start_top_index: Tensor | None = None
    end_top_log_probs: Tensor | None = None
    end_top_index: Tensor | None = None
    cls_logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


class XLMHeadModel(nn.Module):
    """Base of every head: owns `transformer`, initialises the head like transformers, runs the encoder."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = XLMTransformer(config)

    def _init_head(self) -> None:
        for name, child in self.named_children():
            if name != "transformer":
                child.apply(lambda m: init_weights(m, self.config))

    def _encode(self, input_ids: Tensor, output_hidden_states: bool, **inputs: Tensor | bool | None) -> EncoderOutput:
        return self.transformer.encode(input_ids, output_hidden_states=output_hidden_states, **inputs)


class XLMPredLayer(nn.Module):
    """Output projection (`proj`); its weight is tied to the word embeddings by `XLMWithLMHead`."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.emb_dim, config.vocab_size)


def _check_pred_mask(pred_mask: Tensor | SelectedPositions, input_ids: Tensor) -> None:
    mask = pred_mask.mask if isinstance(pred_mask, SelectedPositions) else pred_mask
    if mask.dtype != torch.bool or mask.shape != input_ids.shape:
        raise ValueError(f"pred_mask must be a bool tensor of shape {tuple(input_ids.shape)}")


class XLMWithLMHead(XLMHeadModel):
    """transformers' `XLMWithLMHeadModel`: tied LM head, with an optional selected-positions fast path."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__(config)
        self.pred_layer = XLMPredLayer(config)
        self._init_head()
        self.pred_layer.proj.weight = self.transformer.embeddings.weight

    def forward(
        self,
        input_ids: Tensor,
        *,
        labels: Tensor | None = None,
        pred_mask: Tensor | SelectedPositions | None = None,
        output_hidden_states: bool = False,
        **inputs: Tensor | bool | None,
    ) -> LMOutput:
        """Logits and the mean cross-entropy (ignore_index -100; no shift: shift yourself for CLM).

        Args:
            input_ids: (bs, slen).
            labels: (bs, slen) targets, or (n_pred,) with `pred_mask`.
            pred_mask: bool (bs, slen), or its `SelectedPositions` layout (no host sync): compute logits only
                there, row-major, as `(n_pred, vocab)`.
            output_hidden_states: return every layer's output in `hidden_states`.
            **inputs: encoder inputs (`attention_mask`, `langs`, `position_ids`, `lengths`, `causal`, ...).
        """
        if pred_mask is not None:
            _check_pred_mask(pred_mask, input_ids)
        # With pred_mask the encoder's last block runs only at those rows: (n_pred, dim), row-major.
        encoded = self._encode(input_ids, output_hidden_states, output_positions=pred_mask, **inputs)
        hidden = encoded.last_hidden_state  # (bs, slen, dim) or (n_pred, dim)
        logits = self.pred_layer.proj(hidden)  # (bs, slen, V) or (n_pred, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        return LMOutput(logits, loss, encoded.hidden_states)

    def masked_lm_loss(
        self, input_ids: Tensor, pred_mask: Tensor | SelectedPositions, labels: Tensor, **inputs: Tensor | bool | None
    ) -> Tensor:
        """Per-target cross-entropy `(n_pred,)` at `pred_mask` (a bool mask or, with no host sync, its
        `SelectedPositions` layout; row-major), the training path: the encoder's
        last block and the projection run only at those rows, and projection + CE are one fused node
        (`linear_cross_entropy`) that never returns the logits. Same numbers as `forward(...).logits` + CE."""
        _check_pred_mask(pred_mask, input_ids)
        proj, words = self.pred_layer.proj, self.transformer.embeddings
        # Tied (always, unless a user re-assigned one of them): both gradients of the matrix meet in one buffer.
        tied = proj.weight is words.weight and words.weight.requires_grad and torch.is_grad_enabled()
        tied = tied and not torch.compiler.is_compiling()  # inductor fuses the plain ops itself
        slot = TiedGradSlot() if tied else None
        encoded = self._encode(input_ids, False, output_positions=pred_mask, word_grad_slot=slot, **inputs)
        return linear_cross_entropy(encoded.last_hidden_state, proj.weight, proj.bias, labels, slot)  # (n_pred,)

    def compile(self, *args: object, **kwargs: object) -> None:
        """`nn.Module.compile` (forward), and the training loss `masked_lm_loss` too; state-dict keys unchanged."""
        super().compile(*args, **kwargs)
        self.masked_lm_loss = torch.compile(self.masked_lm_loss, *args, **kwargs)


class XLMSequenceSummary(nn.Module):
    """Pool a sequence (`summary_type`) -> dropout -> optional Linear `summary` -> optional activation."""

    _ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.summary_type = config.summary_type
        self.summary: nn.Module = nn.Identity()
        if config.summary_use_proj:
            n_out = config.num_labels if config.summary_proj_to_labels else config.emb_dim
            self.summary = nn.Linear(config.emb_dim, n_out)
        self.activation = self._ACTIVATIONS.get(config.summary_activation or "", lambda x: x)
        self.first_dropout = nn.Dropout(config.summary_first_dropout)
        self.last_dropout = nn.Dropout(config.extra.get("summary_last_dropout", 0.0))

    def forward(self, hidden: Tensor, cls_index: Tensor | None = None) -> Tensor:
        """hidden (bs, slen, dim) -> (bs, n_out); `cls_index` (bs,) for summary_type cls_index (default: last)."""
        if self.summary_type == "first":
            pooled = hidden[:, 0]  # (bs, dim)
        elif self.summary_type == "last":
            pooled = hidden[:, -1]
        elif self.summary_type == "mean":
            pooled = hidden.mean(dim=1)
        else:
            if cls_index is None:
                cls_index = torch.full(hidden.shape[:1], hidden.size(1) - 1, device=hidden.device)
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), cls_index]
        return self.last_dropout(self.activation(self.summary(self.first_dropout(pooled))))


def sequence_classification_loss(logits: Tensor, labels: Tensor, problem_type: str | None) -> Tensor:
    """transformers' rule: regression (MSE) for one label, CE for integer labels, else multi-label BCE."""
    num_labels = logits.size(-1)
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if num_labels == 1 else F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"unknown problem_type {problem_type!r}")


class XLMForSequenceClassification(XLMHeadModel):
    """transformers' `XLMForSequenceClassification` (XLM summary head: first token -> dropout -> Linear)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__(config)
        self.sequence_summary = XLMSequenceSummary(config)
        self._init_head()

    def forward(
        self,
        input_ids: Tensor,
        *,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        **inputs: Tensor | bool | None,
    ) -> ClassifierOutput:
        """Logits (bs, num_labels); loss by `config.problem_type` (inferred as transformers when None)."""
        encoded = self._encode(input_ids, output_hidden_states, **inputs)
        logits = self.sequence_summary(encoded.last_hidden_state)  # (bs, num_labels)
        loss = None if labels is None else sequence_classification_loss(logits, labels, self.config.problem_type)
        return ClassifierOutput(logits, loss, encoded.hidden_states)


class XLMForTokenClassification(XLMHeadModel):
    """transformers' `XLMForTokenClassification`: dropout(config.dropout) -> Linear `classifier` per token."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.emb_dim, config.num_labels)
        self._init_head()

    def forward(
        self,
        input_ids: Tensor,
        *,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        **inputs: Tensor | bool | None,
    ) -> ClassifierOutput:
        """Logits (bs, slen, num_labels); loss = mean CE over labels (bs, slen), ignore_index -100."""
        encoded = self._encode(input_ids, output_hidden_states, **inputs)
        logits = self.classifier(self.dropout(encoded.last_hidden_state))  # (bs, slen, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        return ClassifierOutput(logits, loss, encoded.hidden_states)


class XLMForMultipleChoice(XLMHeadModel):
    """transformers' `XLMForMultipleChoice`: summary head (dim -> num_labels) then `logits_proj` (-> 1)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__(config)
        self.sequence_summary = XLMSequenceSummary(config)
        self.logits_proj = nn.Linear(config.num_labels, 1)
        self._init_head()

    def forward(
        self,
        input_ids: Tensor,
        *,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        **inputs: Tensor | bool | None,
    ) -> ClassifierOutput:
        """input_ids and per-token inputs are (bs, num_choices, slen); logits (bs, num_choices); CE loss.

        Raises:
            ValueError: if `lengths` is given (transformers silently drops it; use `attention_mask`).
        """
        if inputs.get("lengths") is not None:
            raise ValueError("lengths cannot be used with multiple choice inputs; pass attention_mask instead")
        bs, num_choices, slen = input_ids.shape
        flat = {k: v.reshape(bs * num_choices, slen) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        encoded = self._encode(input_ids.reshape(bs * num_choices, slen), output_hidden_states, **flat)
        logits = self.logits_proj(self.sequence_summary(encoded.last_hidden_state))  # (bs * nc, 1)
        logits = logits.view(bs, num_choices)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ClassifierOutput(logits, loss, encoded.hidden_states)


class XLMForQuestionAnsweringSimple(XLMHeadModel):
    """transformers' `XLMForQuestionAnsweringSimple`: Linear `qa_outputs` (dim -> 2) split into start / end."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"question_answering_simple needs num_labels=2 (start, end), got {config.num_labels}")
        self.qa_outputs = nn.Linear(config.emb_dim, config.num_labels)
        self._init_head()

    def forward(
        self,
        input_ids: Tensor,
        *,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        output_hidden_states: bool = False,
        **inputs: Tensor | bool | None,
    ) -> QuestionAnsweringSimpleOutput:
        """Start/end logits (bs, slen); loss = mean of the two CEs, positions >= slen are ignored."""
        encoded = self._encode(input_ids, output_hidden_states, **inputs)
        logits = self.qa_outputs(encoded.last_hidden_state)  # (bs, slen, 2)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # (bs, slen)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)  # out-of-span positions are clamped to slen and ignored
            start_loss = F.cross_entropy(start_logits, start_positions.clamp(0, ignored), ignore_index=ignored)
            end_loss = F.cross_entropy(end_logits, end_positions.clamp(0, ignored), ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        return QuestionAnsweringSimpleOutput(start_logits, end_logits, loss, encoded.hidden_states)


def _apply_p_mask(logits: Tensor, p_mask: Tensor | None) -> Tensor:
    """Push positions with p_mask == 1 (cannot be an answer) to -1e30 (-65500 in fp16)."""
    if p_mask is None:
        return logits
    big = 65500 if p_mask.dtype == torch.float16 else 1e30
    return logits * (1 - p_mask) - big * p_mask


class XLMPoolerStartLogits(nn.Module):
    """Start logits: `dense` (dim -> 1)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.emb_dim, 1)

    def forward(self, hidden: Tensor, p_mask: Tensor | None = None) -> Tensor:
        """hidden (bs, slen, dim) -> (bs, slen)."""
        return _apply_p_mask(self.dense(hidden).squeeze(-1), p_mask)


class XLMPoolerEndLogits(nn.Module):
    """End logits given start states: dense_0 (2dim -> dim) -> tanh -> LayerNorm -> dense_1 (dim -> 1)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.dense_0 = nn.Linear(2 * config.emb_dim, config.emb_dim)
        self.LayerNorm = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.dense_1 = nn.Linear(config.emb_dim, 1)

    def forward(self, hidden: Tensor, start_states: Tensor, p_mask: Tensor | None = None) -> Tensor:
        """hidden and start_states (..., slen, [k,] dim) -> (..., slen[, k])."""
        x = self.LayerNorm(torch.tanh(self.dense_0(torch.cat([hidden, start_states], dim=-1))))
        return _apply_p_mask(self.dense_1(x).squeeze(-1), p_mask)


class XLMPoolerAnswerClass(nn.Module):
    """Answerability logit from the start state and the CLS state: dense_0 -> tanh -> dense_1 (no bias)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.dense_0 = nn.Linear(2 * config.emb_dim, config.emb_dim)
        self.dense_1 = nn.Linear(config.emb_dim, 1, bias=False)

    def forward(self, hidden: Tensor, start_states: Tensor, cls_index: Tensor | None) -> Tensor:
        """hidden (bs, slen, dim), start_states (bs, dim), cls_index (bs,) or None = last token -> (bs,)."""
        rows = torch.arange(hidden.size(0), device=hidden.device)
        cls_states = hidden[:, -1] if cls_index is None else hidden[rows, cls_index]  # (bs, dim)
        return self.dense_1(torch.tanh(self.dense_0(torch.cat([start_states, cls_states], dim=-1)))).squeeze(-1)


class XLMSQuADHead(nn.Module):
    """The XLNet-style SQuAD head of transformers' `XLMForQuestionAnswering` (`qa_outputs`)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.start_n_top = config.start_n_top
        self.end_n_top = config.end_n_top
        self.start_logits = XLMPoolerStartLogits(config)
        self.end_logits = XLMPoolerEndLogits(config)
        self.answer_class = XLMPoolerAnswerClass(config)

    def training_loss(
        self,
        hidden: Tensor,
        start_positions: Tensor,
        end_positions: Tensor,
        cls_index: Tensor | None,
        is_impossible: Tensor | None,
        p_mask: Tensor | None,
    ) -> Tensor:
        """(CE_start + CE_end) / 2 with end logits from the gold start, + 0.5 BCE(answerability) if given."""
        rows = torch.arange(hidden.size(0), device=hidden.device)
        gold_start = hidden[rows, start_positions]  # (bs, dim)
        start_logits = self.start_logits(hidden, p_mask)  # (bs, slen)
        end_logits = self.end_logits(hidden, gold_start[:, None].expand_as(hidden), p_mask)  # (bs, slen)
        loss = (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
        if cls_index is not None and is_impossible is not None:
            cls_logits = self.answer_class(hidden, gold_start, cls_index)  # (bs,)
            loss = loss + 0.5 * F.binary_cross_entropy_with_logits(cls_logits, is_impossible.to(cls_logits.dtype))
        return loss

    def beam_search(
        self, hidden: Tensor, cls_index: Tensor | None, p_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Top starts, top ends per start and the answerability logit (see `QuestionAnsweringOutput`)."""
        bs, slen, dim = hidden.shape
        start_probs = F.softmax(self.start_logits(hidden, p_mask), dim=-1)  # (bs, slen)
        start_top_probs, start_top_index = start_probs.topk(self.start_n_top, dim=-1)  # (bs, k)
        start_states = hidden.gather(1, start_top_index[..., None].expand(-1, -1, dim))  # (bs, k, dim)
        start_states = start_states[:, None].expand(-1, slen, -1, -1)  # (bs, slen, k, dim)
        hidden_exp = hidden[:, :, None].expand_as(start_states)  # (bs, slen, k, dim)
        end_p_mask = p_mask[..., None] if p_mask is not None else None  # (bs, slen, 1)
        end_probs = F.softmax(self.end_logits(hidden_exp, start_states, end_p_mask), dim=1)  # (bs, slen, k)
        end_top_probs, end_top_index = end_probs.topk(self.end_n_top, dim=1)  # (bs, end_n_top, k)
        expected_start = torch.einsum("bld,bl->bd", hidden, start_probs)  # (bs, dim)
        cls_logits = self.answer_class(hidden, expected_start, cls_index)  # (bs,)
        n_pairs = self.start_n_top * self.end_n_top
        return (
            start_top_probs,
            start_top_index,
            end_top_probs.reshape(bs, n_pairs),
            end_top_index.reshape(bs, n_pairs),
            cls_logits,
        )


class XLMForQuestionAnswering(XLMHeadModel):
    """transformers' `XLMForQuestionAnswering` (beam-search SQuAD head with answerability)."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__(config)
        self.qa_outputs = XLMSQuADHead(config)
        self._init_head()

    def forward(
        self,
        input_ids: Tensor,
        *,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        cls_index: Tensor | None = None,
        is_impossible: Tensor | None = None,
        p_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        **inputs: Tensor | bool | None,
    ) -> QuestionAnsweringOutput:
        """With start and end positions: the training loss. Otherwise: the beam-search outputs.

        `cls_index` (bs,) is the CLS position (default: last token); `p_mask` (bs, slen) float, 1 = not an answer.
        """
        encoded = self._encode(input_ids, output_hidden_states, **inputs)
        hidden = encoded.last_hidden_state  # (bs, slen, dim)
        if start_positions is not None and end_positions is not None:
            loss = self.qa_outputs.training_loss(
                hidden, start_positions, end_positions, cls_index, is_impossible, p_mask
            )
            return QuestionAnsweringOutput(loss=loss, hidden_states=encoded.hidden_states)
        beams = self.qa_outputs.beam_search(hidden, cls_index, p_mask)
        return QuestionAnsweringOutput(None, *beams, hidden_states=encoded.hidden_states)


HEADS: dict[str, type[XLMHeadModel]] = {
    "lm": XLMWithLMHead,
    "sequence_classification": XLMForSequenceClassification,
    "token_classification": XLMForTokenClassification,
    "multiple_choice": XLMForMultipleChoice,
    "question_answering_simple": XLMForQuestionAnsweringSimple,
    "question_answering": XLMForQuestionAnswering,
}
"""Head name (as `load_model(head=...)` takes it) -> model class."""

HF_ARCHITECTURES: dict[str, str] = {
    "lm": "XLMWithLMHeadModel",
    "sequence_classification": "XLMForSequenceClassification",
    "token_classification": "XLMForTokenClassification",
    "multiple_choice": "XLMForMultipleChoice",
    "question_answering_simple": "XLMForQuestionAnsweringSimple",
    "question_answering": "XLMForQuestionAnswering",
}
"""Head name -> the transformers class name written in config.json's `architectures`."""


def build_model(config: XLMConfig, head: str = "lm") -> XLMHeadModel:
    """A freshly initialised model with the named head; raises ValueError naming an unknown head."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    return HEADS[head](config)
