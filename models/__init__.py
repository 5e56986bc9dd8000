"""The ML room: one subpackage per method, pure Python over tensors, PIL images and files.

No HTTP, no Celery, no Redis here. Load pipelines through `models.profiles` (tiny |
pretrained | auto); decode and encode media with `models.media`. This package's root imports
nothing heavy, so `import models` stays cheap.
"""
