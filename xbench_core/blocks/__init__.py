"""Building blocks shared by model plugins: the pieces several official models have in common,
written once (plugins import them from `xbench_core`, by name).

- preprocessing: ImageNet squash and histogram equalization (MedKLIP, MAVL)
- frozen_text, text: frozen-BERT query embeddings with a disk cache; generated BERT vocabularies
- decoder: the DETR pre-norm decoder layer of the fusion models
- fusion: decoder stack, entity table and entity-book model base (MedKLIP, MAVL)
- knowledge: disease-phrase query models (KAD, DeViDe)
- prompts: prompt pairs of CLIP-style models (CLIP, BiomedCLIP)
"""
