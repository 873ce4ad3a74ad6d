"""A character-level LSTM language model (section 3.3): embedding → LSTM → linear.

Shapes use ``B`` batch, ``T`` sequence length, ``V`` vocabulary size, ``L`` LSTM layers and
``H`` hidden size. The recurrent state is the pair ``(h, c)``, each ``(L, B, H)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dlbook.config import Dropout, validate_config
from dlbook.decoding import check_sampling, sample_next
from dlbook.nn.transformer import check_ids

State = tuple[torch.Tensor, torch.Tensor]


@dataclass
class CharLSTMConfig:
    """Architecture of a :class:`CharLSTM`.

    Attributes:
        vocab_size: number of distinct tokens ``V`` (characters).
        embed_dim: width of the token embedding fed to the LSTM.
        hidden_size: width ``H`` of each LSTM layer's hidden and cell state.
        num_layers: number of stacked LSTM layers ``L``.
        dropout: dropout between LSTM layers and before the output layer (0 disables it).
    """

    vocab_size: int
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: Dropout = 0.0

    def __post_init__(self) -> None:
        validate_config(self)  # every field by its annotation: sizes >= 1, dropout in [0, 1)


class CharLSTM(nn.Module):
    """Next-token model: ``Embedding(V, E) → LSTM(E, H, L, batch_first) → Linear(H, V)``.

    ``forward(idx (B, T), state)`` returns logits ``(B, T, V)`` for the token after each
    position, and the final state ``(h, c)`` so that a long text can be processed in chunks.
    """

    config_class = CharLSTMConfig

    def __init__(self, config: CharLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def _check_state(self, state: State, batch: int) -> None:
        shape = (self.config.num_layers, batch, self.config.hidden_size)
        if (
            not isinstance(state, tuple)
            or len(state) != 2
            or tuple(state[0].shape) != shape
            or tuple(state[1].shape) != shape
        ):
            got = [tuple(s.shape) for s in state] if isinstance(state, tuple) else type(state)
            raise ValueError(f"state must be a pair (h, c) of shape {shape} each, got {got}")

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Map token ids ``(B, T)`` (and an optional state) to logits ``(B, T, V)`` and a state.

        ``state`` is ``(h, c)``, each ``(L, B, H)``; ``None`` starts from zeros.
        """
        check_ids(idx, self.config.vocab_size)
        if state is not None:
            self._check_state(state, idx.shape[0])
        out, state = self.lstm(self.embed(idx), state)
        return self.head(self.drop(out)), state

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``prompt`` by sampling ``max_new_tokens`` tokens one at a time.

        Args:
            prompt: token ids ``(T0,)`` or ``(B, T0)`` with ``T0 >= 1``.
            max_new_tokens: how many tokens to append.
            temperature: logits are divided by it before the softmax; below 1 sharpens the
                distribution, above 1 flattens it, and 0 means greedy (always the argmax).
            generator: random generator for sampling, on the model's device; pass a seeded
                one for reproducible text.

        Returns:
            The prompt followed by the new tokens, ``(T0 + max_new_tokens,)`` or
            ``(B, T0 + max_new_tokens)`` like the prompt.
        """
        check_sampling(temperature)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        squeeze = prompt.dim() == 1
        idx = prompt[None] if squeeze else prompt
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(
                f"prompt must be (T0,) or (B, T0) with T0 >= 1, got {tuple(prompt.shape)}"
            )
        was_training = self.training
        self.eval()
        try:
            idx = idx.to(next(self.parameters()).device)
            out = [idx]
            logits, state = self(idx)
            for _ in range(max_new_tokens):
                nxt = sample_next(logits[:, -1, :], temperature, generator=generator)
                out.append(nxt)
                logits, state = self(nxt, state)
        finally:
            self.train(was_training)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result
