"""A small GPT-NeoX-style byte-level BPE tokenizer for the demo Cobra, trained on the demo's own questions.

Object names ("red square", and their plurals "red squares") are single tokens: the pre-tokenizer keeps each
colour-shape pair in one piece, which training then merges. Named objects are the keys of existence and spatial
questions; a small Mamba (no MLPs) learns to combine two words into one key slowly (docs/DEMO_MODEL.md), and one token
per object removes that step. Relation phrases with their article (" to the left of the", " above the", and every
wording of `phrasing.RELATION_SYNONYMS`: " under the", " higher than the") are single tokens too, so that in every
spatial template the two objects' names are at most three tokens apart: within the reach of Mamba's short convolution
(d_conv 4), which can then subtract one object's looked-up position from the other's.

It keeps the release's conventions: `<|endoftext|>` is id 0 (eos, and also bos/unk/pad, no BOS is ever added),
`<|padding|>` is id 1, and the Zephyr markers `<|user|>` / `<|assistant|>` are ordinary text. Training is deterministic:
the corpus is a fixed-seed stream of conversations split into the exact per-turn strings the prompt builder produces.
"""

import itertools
from collections.abc import Iterator, Mapping

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cobra_app.demo.conversations import CLOSED_SETS, KIND_WEIGHTS, iter_training_examples, plural
from cobra_app.demo.phrasing import RELATION_SYNONYMS
from cobra_app.demo.scenes import COLOURS, SHAPES

EOS, PAD = "<|endoftext|>", "<|padding|>"
OBJECT_NAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
OBJECT_PLURALS = tuple(f"{colour} {plural(shape)}" for colour in COLOURS for shape in SHAPES)
# relation phrase with its article -> the relation it says: "to the left of the" -> "left of", "under the" -> "below"
RELATION_WORDS: dict[str, str] = {f"{phrase} the": relation for relation, phrases in RELATION_SYNONYMS.items()
                                  for phrase in phrases}
# GPT-2's split (what ByteLevel's own regex does), preceded by whole object names and relation phrases (never inside
# a longer word)
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENS = (r" ?(?<!\p{L})(?:" + "|".join(COLOURS) + ") (?:" + "|".join(SHAPES) + r")(?:e?s)?\b"
              + r"| ?(?<!\p{L})(?:" + "|".join(sorted(RELATION_WORDS, key=len, reverse=True)) + r")\b|" + GPT2_SPLIT)
CORPUS_SEED = 0
CORPUS_CONVERSATIONS = 4000
# generic English, so that users' free text does not fall apart into single bytes
ENGLISH = """\
Hello! Hi there. Thank you, thanks a lot. Please tell me what you can see in this picture, and explain why.
Can you help me with a question about the photo? I would like to know more about the shapes and their colors.
What is the biggest thing here? Where is it? Which one is smaller, the first or the second? Is it on the top or
at the bottom, in the middle, near the center, next to, behind, in front of, between, inside, outside, around?
Sorry, I do not understand. Could you say that again? Let me think. Yes, that is right. No, that is wrong.
Maybe, I am not sure. The answer is simple: it depends on what we mean. This is a small model that was trained on
a synthetic world of simple pictures, so it only knows about a few things, but it tries to answer every question.
Good morning, good evening, good night. How are you today? I am fine, and you? What time is it? Who are you?
Write a short story about a cat and a dog that live in a house with a garden, a tree, a car and a big window.
People often ask about the weather, the water, the sky, the sun, the moon, the sea, food, music, books and work.
one two three four five six seven eight nine ten first second third last many more most some any all none every
black white gray grey brown pink color colour shape size large big small tiny left right up down top bottom
I you he she it we they me him her us them my your his its our their this that these those here there
be is am are was were been being have has had do does did will would shall should can could may might must
about after again against because before below between both during each few from further into just only other over
own same so than too under until very while with without again also always never often sometimes usually already
Computers, phones and cameras take pictures; a vision language model reads the image and writes an answer in words.
Describe, explain, compare, count, find, show, give, make, look, see, know, think, want, need, like, love, feel.
Could you please describe the photograph, the scene, the objects and the background in more detail for me?
Important information, different examples, interesting problems, beautiful places, possible reasons, simple rules.
Everyone knows something; nobody knows everything. Where were you yesterday? Tomorrow will be another day.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. Numbers: 0 1 2 3 4 5 6 7 8 9 10.
"""


def corpus(kind_weights: Mapping[str, float] = KIND_WEIGHTS) -> Iterator[str]:
    """The training text: per-turn Zephyr strings (special tokens split off) of a fixed conversation stream, its
    questions mixed as training's (`kind_weights`)."""
    examples = itertools.islice(iter_training_examples(CORPUS_SEED, kind_weights=kind_weights), CORPUS_CONVERSATIONS)
    for _, conversation in examples:
        for i, qa in enumerate(conversation):
            yield ("" if i == 0 else "\n") + f"<|user|>\n{qa.question}"
            yield "\n<|assistant|>\n"
            yield qa.answer
    yield from ENGLISH.splitlines()
    yield from (" " + name for name in (*OBJECT_NAMES, *OBJECT_PLURALS, *RELATION_WORDS))  # each one at least once


def build_demo_tokenizer(vocab_size: int = 1280,
                         kind_weights: Mapping[str, float] = KIND_WEIGHTS) -> PreTrainedTokenizerFast:
    """Train the demo tokenizer; every closed-set answer word ("Yes", "No", "True", "False"), every object name
    (" red square", after a space as in sentences) and every relation phrase (" to the left of the") is a single
    token.

    `vocab_size` is an upper bound (the corpus runs out of merges at 2024 tokens); 1280, the default, is the smallest
    multiple of 256 at which every object name, plural and relation phrase is a single token. `kind_weights`: the
    training run's question mix, which the corpus is drawn with (another mix gives other merges).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(kind_weights), trainer=trainer)
    split = [word for pair in CLOSED_SETS for word in pair if len(tokenizer.encode(word).ids) != 1]
    split += [name for name in (*OBJECT_NAMES, *OBJECT_PLURALS, *RELATION_WORDS)
              if len(tokenizer.encode(" " + name).ids) != 1]
    if split:
        raise ValueError(f"{split} are not single tokens at vocab_size={vocab_size}")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)
