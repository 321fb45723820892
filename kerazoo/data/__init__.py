"""Data: labeled text, language-modelling corpora, sentence pairs, skip-gram pairs, embedded samples, named datasets."""

from kerazoo.data.corpus import lm_dataset, prefetched, read_text, sample_corpus, split_text
from kerazoo.data.datasets import DATASETS, decode_imdb, load_dataset
from kerazoo.data.few_shot import (FewShotTask, LinearRuleFamily, TokenMappingFamily, episodes, held_out_tasks,
                                   load_few_shot_task, split_rules)
from kerazoo.data.labeled_text import LabeledText, load_labeled_text
from kerazoo.data.pairs import encode_pairs, pairs_dataset, read_pairs
from kerazoo.data.sample import sample_sentiment
from kerazoo.data.sample_pairs import sample_pairs
from kerazoo.data.skipgram import (build_vocabulary, encode_words, keep_probabilities, negative_distribution,
                                   skipgram_dataset, skipgram_pairs, tokenize_words)

__all__ = ["DATASETS", "FewShotTask", "LabeledText", "LinearRuleFamily", "TokenMappingFamily", "build_vocabulary",
           "decode_imdb", "encode_pairs", "encode_words", "episodes", "held_out_tasks", "keep_probabilities",
           "lm_dataset", "load_dataset", "load_few_shot_task", "load_labeled_text", "negative_distribution",
           "pairs_dataset", "prefetched", "read_pairs", "read_text", "sample_corpus", "sample_pairs",
           "sample_sentiment", "skipgram_dataset", "skipgram_pairs", "split_rules", "split_text", "tokenize_words"]
