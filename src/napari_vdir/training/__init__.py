"""Training and fine-tuning (``python -m napari_vdir.training``, :func:`.session.finetune`): recipes
(:mod:`.config`), data sources (:mod:`.data`), losses, self-supervised views and the loop (:mod:`.trainer`).
It reuses the core's networks and degradations and imports nothing from the plugin, the command line or export."""
