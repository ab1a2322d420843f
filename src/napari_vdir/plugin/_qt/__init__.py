"""The Qt docks (Restore, Fine-tune) and their drop zone. They only gather settings and call the layer logic, the
core and the training session; nothing outside this folder imports Qt."""
