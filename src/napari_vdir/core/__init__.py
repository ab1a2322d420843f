"""The restoration core: everything ``napari_vdir.restore`` needs, in pure torch and numpy.

It owns the networks (:mod:`.nets`) and their traced graphs (:mod:`.graphs`), the weights format (:mod:`.weights`)
and the registry of shipped and user models (:mod:`.models`), the tasks (:mod:`.tasks`), the validated restore
request (:mod:`.request`, behind the :mod:`.api` facade; its option messages in :mod:`.errors`), image layout
(:mod:`.layout`) and the one intensity policy (:mod:`.intensity`), tiling and inference (:mod:`.inference`,
:mod:`.lazy` for dask), the torch and ONNX Runtime backends with their graph cache (:mod:`.backends`), devices,
file io and the synthetic degradations that training reuses. It imports nothing from the other parts (plugin,
training, export, cli) and no Qt or napari module; the contract in ``pyproject.toml`` (``lint-imports``) checks that.
"""
