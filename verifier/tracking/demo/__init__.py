"""The ``verifier track`` demo (THEORY.md §6), apart from the tracker it demonstrates: a ViT on scikit-learn's
digits (:mod:`.vit_model`, :mod:`.vit_training`) and a GPT-2 built from a config on a copying task, trained with
the Hugging Face Trainer and the callback (:mod:`.gpt2_training`), at several init scales; the presets and the
frozen :class:`~.track_config.TrackConfig` (:mod:`.track_config`); the command itself (:mod:`.track_command`).
Nothing in :mod:`verifier.tracking` imports this package."""
