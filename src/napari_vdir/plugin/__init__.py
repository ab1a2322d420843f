"""The napari side: what the plugin's manifest (``napari.yaml``) names.

Pure layer logic (:mod:`.layers`: a layer's data, axes and intensities to a restore call and back, and the layers the
docks offer), what the Fine-tune dock decides and prepares (:mod:`.finetune`), the right-click commands
(:mod:`.commands`) and the sample data (:mod:`.sample_data`) need no Qt; the docks live in :mod:`._qt`. It may import
the core and training (the Fine-tune dock runs :func:`napari_vdir.training.session.finetune`), never the command line
or export.
"""
