"""Subject-driven generation: a few photos of one subject + a prompt -> new images of it.

    incontext.py      BLIP-Diffusion (no tuning): Q-Former subject embedding spliced into the
                      CLIP text encoder's context (`InContextSubjectPipeline`)
    expert.py         DreamBooth with LoRA on SD 1.5 (`DreamBoothLoRAPipeline`: tune, export,
                      load, generate), prior preservation with base-model class images
    lora.py           the peft adapters and the tuned-subject artifact (LoRA params + JSON)
    metrics.py        DreamBench's CLIP-I, CLIP-T, DINO
    blip.py           BLIP-Diffusion's Q-Former / context text encoder, forwards for transformers 4 and 5
    loader.py         load_subject_incontext / _expert / _metrics for tiny | pretrained | auto
    weights_layout.py the pretrained files (no torch; their downloads: models/fetch.py)
    tiny.py           the tiny profile

These are the two open routes to SuTI's two modes (Chen et al., 2023, whose weights are not
published): the in-context apprentice and the per-subject experts. Importing this package
imports nothing heavy.
"""
