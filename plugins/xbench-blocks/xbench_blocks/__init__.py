"""Model building blocks shared by XBench model plugins: the pieces several official models have in
common, written once. A library, not a plugin (it registers nothing): model plugins depend on it and
import from its modules (`from xbench_blocks.fusion import EntityQueryModel`).

- preprocessing: ImageNet squash and histogram equalization (MedKLIP, MAVL)
- frozen_text, text: frozen-BERT query embeddings with a disk cache; generated BERT vocabularies
  and tiny BERT folders for tests
- decoder: the DETR pre-norm decoder layer (MedKLIP, MAVL, CARZero)
- fusion: decoder stack, entity table and entity-book model base (MedKLIP, MAVL)
- knowledge: disease-phrase query models (KAD, DeViDe)
- testing: the entity-book models' shared test suite and test helpers (tests only)
- prompts: prompt pairs of CLIP-style models (CLIP, BiomedCLIP) and their open_clip plumbing
  (building, weights); imports no torch at module level, so that plugin
  packages can read `PROMPT_OPTIONS` for `xbench list`
"""
