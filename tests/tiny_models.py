"""Tiny random models of every supported architecture, built from configs (no downloads), and a tokenizer."""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from neuronxa_ray.model.load import attach
from neuronxa_ray.model.spec import ModelSpec

TEXTS = {
    "eng": [
        "All human beings are born free.",
        "Everyone has the right to life.",
        "No one shall be held in slavery.",
        "Everyone has the right to recognition.",
        "All are equal before the law.",
        "Everyone has the right to an effective remedy.",
    ],
    "fra": [
        "Tous les êtres humains naissent libres.",
        "Tout individu a droit à la vie.",
        "Nul ne sera tenu en esclavage.",
        "Chacun a le droit à la reconnaissance.",
        "Tous sont égaux devant la loi.",
        "Toute personne a droit à un recours effectif.",
    ],
    "deu": [
        "Alle Menschen sind frei geboren.",
        "Jeder hat das Recht auf Leben.",
        "Niemand darf in Sklaverei gehalten werden.",
        "Jeder hat das Recht, anerkannt zu werden.",
        "Alle Menschen sind vor dem Gesetz gleich.",
        "Jeder hat Anspruch auf einen wirksamen Rechtsbehelf.",
    ],
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the test sentences, with a BOS token added like Llama's."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([t for texts in TEXTS.values() for t in texts], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


VOCAB = 320
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.2,
)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, num_key_value_heads=2),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=8),
    "gemma": lambda: transformers.GemmaConfig(**_COMMON, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**_COMMON, num_key_value_heads=2, head_dim=8, sliding_window=16),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **_COMMON, num_key_value_heads=2, head_dim=8, sliding_window=16
    ),
    "olmo": lambda: transformers.OlmoConfig(**_COMMON),
    "olmo2": lambda: transformers.Olmo2Config(**_COMMON),
    "glm": lambda: transformers.GlmConfig(**_COMMON, num_key_value_heads=2, head_dim=8),
    "glm4": lambda: transformers.Glm4Config(**_COMMON, num_key_value_heads=2, head_dim=8),
    "phi3": lambda: transformers.Phi3Config(**_COMMON, num_key_value_heads=2, pad_token_id=0),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_COMMON),
}


def make_model(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0, hook_site: str = "act"):
    """A LoadedModel wrapping a random base model of this architecture."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    try:
        model = transformers.AutoModel.from_config(config, attn_implementation="sdpa")
    except ValueError:  # gemma2 has eager attention only; the extractor right-pads, which eager handles
        model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    model = model.to(dtype)
    return attach(
        model,
        make_tokenizer(),
        ModelSpec(model=f"tiny-{arch}", hook_site=hook_site),
        torch.device("cpu"),
        dtype,
    )


def save_tiny(arch: str, directory, seed: int = 0) -> None:
    """Write a tiny random model + tokenizer as a local model directory (for job-level tests)."""
    lm = make_model(arch, dtype=torch.float32, seed=seed)
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)


def save_tiny_causal(arch: str, directory, seed: int = 0) -> None:
    """Write a tiny random causal LM (its own untied output layer) + tokenizer: what interventions need."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    config.tie_word_embeddings = False
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(torch.float32)
    model.save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
