"""A small byte-level BPE tokenizer and Qwen2.5-VL processor for models trained on the shapes data.

The files load exactly like a released checkpoint's (``unipixel.processing.vision.load_processor``): a
``Qwen2Tokenizer`` (Qwen's pre-tokenizer regex, byte-level BPE) whose ids end with Qwen2.5's 22 special
tokens in Qwen's order and then ``<|ref|>``, ``<|seg|>``, ``<|mem|>`` as additional special tokens
(spec §1.4), with the Qwen2.5-VL chat template (spec §6.1).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from . import shapes

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
"""Qwen2.5's own special tokens, in the order of their ids (151643..151664 in the real tokenizer)."""

UNIPIXEL_TOKENS = ("<|ref|>", "<|seg|>", "<|mem|>")

CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Picture ' + image_count.value|string + ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Video ' + video_count.value|string + ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content -%}{{ content['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
"""The Qwen2.5-VL chat template: default system turn, media items as vision placeholders (spec §6.1)."""


def shapes_corpus(n: int = 2000, seed: int = 1) -> Iterator[str]:
    """Conversation text of ``n`` shapes samples (a stream training never uses) and the chat-template words."""
    yield "system\nYou are a helpful assistant.\nuser\nassistant\nThe best option is (A). (B) (C) (D)"
    for i in range(n):
        for turn in shapes.sample_at(seed, i).turns:
            yield turn.user
            yield turn.assistant


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Qwen2Tokenizer:
    """Byte-level BPE of at most ``vocab_size`` pieces trained on ``texts``, then the special tokens."""
    special = QWEN_SPECIAL_TOKENS + UNIPIXEL_TOKENS
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )

    def plain(text: str) -> str:  # special tokens must not leak into the BPE pieces
        for token in special:
            text = text.replace(token, " ")
        return text

    backend.train_from_iterator((plain(t) for t in texts), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab.update({token: len(vocab) + i for i, token in enumerate(special)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[tuple(m) for m in model["merges"]], unk_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE, model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(QWEN_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(UNIPIXEL_TOKENS)})
    assert tokenizer.convert_tokens_to_ids(list(special)) == list(range(len(vocab) - len(special), len(vocab)))
    return tokenizer


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor:
    """The Qwen2.5-VL processor (stock image/video processor settings) around ``tokenizer``."""
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
