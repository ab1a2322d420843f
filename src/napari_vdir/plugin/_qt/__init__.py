"""The Qt docks (Restore, Fine-tune), the worker base they share (:mod:`.worker`), their drop zone (:mod:`.drops`) and
the Fine-tune dock's plot (:mod:`.plot`). They only gather settings and call the layer logic, the core and the training
session; nothing outside this folder imports Qt."""
