"""Video models: DiTCtrl multi-prompt generation on CogVideoX (`models.video.ditctrl`),
Tune-A-Video editing (`models.video.tuneavideo`), MP4 encode/decode (`models.video.media`)."""
