"""Text and ids: everything charnn knows about a corpus before a model sees it.

vocab.py (characters <-> ids, special tokens, the unknown-character policy), corpus.py
(reading files, directories and the bundled corpus; the 90/10 split), chunks.py (the same
text read in chunks, for texts of any size), prepare.py (`charnn
prepare`: token files read as training needs them), source.py (open_corpus: which corpus,
which split, which transliteration, answered once for training, evaluation and export),
batching.py (stateful TBPTT streams and random windows), documents.py (`--documents`: a corpus
cut into documents, their vocabulary and held-out set, their ids) and docbatches.py (the
documents layout: one document per row). May import errors, files and
progress; nothing here imports torch models, runs or settings above it.
"""
